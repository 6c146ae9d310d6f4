package client

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mcprouter/mcp-router/clients/go/gen/mcprouter/v1"
)

// Served is one RouteData answer: the typed value and how it was served.
type Served[T any] struct {
	Status   pb.ServeStatus         // CACHED, FRESH, STALE (reads); STORED (writes)
	CacheKey string                 // the key it is cached under; empty for writes
	StoredAt *timestamppb.Timestamp // when it was read from its store, if the server says
	Value    T
}

// route makes one RouteData call; pick reads the expected result case (nil
// when the server answered another one, a protocol error).
func route[T comparable](c *Client, ctx context.Context, req *pb.RouteDataRequest, retryable bool, pick func(*pb.RouteDataResponse) T) (*Served[T], error) {
	resp, err := invoke(c, ctx, retryable, func(ctx context.Context, opts ...grpc.CallOption) (*pb.RouteDataResponse, error) {
		return c.Raw.RouteData(ctx, req, opts...)
	})
	if err != nil {
		return nil, err
	}
	value := pick(resp)
	var missing T
	if value == missing {
		return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf("the server answered %T, not the expected result", resp.GetResult())}
	}
	return &Served[T]{Status: resp.GetStatus(), CacheKey: resp.GetCacheKey(), StoredAt: resp.GetStoredAt(), Value: value}, nil
}

// RouteData sends any RouteData request once and returns the answer as is.
func (c *Client) RouteData(ctx context.Context, req *pb.RouteDataRequest) (*pb.RouteDataResponse, error) {
	return invoke(c, ctx, false, func(ctx context.Context, opts ...grpc.CallOption) (*pb.RouteDataResponse, error) {
		return c.Raw.RouteData(ctx, req, opts...)
	})
}

// GetExperiment reads an experiment (cached under experiment:{id}).
func (c *Client) GetExperiment(ctx context.Context, experimentID string) (*Served[*pb.Experiment], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_GetExperiment{
		GetExperiment: &pb.GetExperimentOperation{ExperimentId: experimentID}}}
	return route(c, ctx, req, true, (*pb.RouteDataResponse).GetExperiment)
}

// GetAssignment is the user's sticky variant, assigned on first request.
func (c *Client) GetAssignment(ctx context.Context, experimentID, userID string) (*Served[*pb.Assignment], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_GetAssignment{
		GetAssignment: &pb.GetAssignmentOperation{ExperimentId: experimentID, UserId: userID}}}
	return route(c, ctx, req, true, (*pb.RouteDataResponse).GetAssignment)
}

// GetUserProfile reads a user profile (cached under user:{id}:profile).
func (c *Client) GetUserProfile(ctx context.Context, userID string) (*Served[*pb.UserProfile], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_GetUserProfile{
		GetUserProfile: &pb.GetUserProfileOperation{UserId: userID}}}
	return route(c, ctx, req, true, (*pb.RouteDataResponse).GetUserProfile)
}

// GetEventMetrics reads one metric of one variant for one UTC hour. hour is
// sent as given: one that is not truncated is refused (HOUR_NOT_TRUNCATED).
func (c *Client) GetEventMetrics(ctx context.Context, experimentID, variant, metric string, hour time.Time) (*Served[*pb.EventMetrics], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_GetEventMetrics{
		GetEventMetrics: &pb.GetEventMetricsOperation{ExperimentId: experimentID, Variant: variant, Metric: metric, Hour: timestamppb.New(hour)}}}
	return route(c, ctx, req, true, (*pb.RouteDataResponse).GetEventMetrics)
}

// GetAnalytics reads one experiment's analytics for one UTC day; day must be
// midnight UTC (DAY_NOT_TRUNCATED otherwise).
func (c *Client) GetAnalytics(ctx context.Context, experimentID string, day time.Time) (*Served[*pb.Analytics], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_GetAnalytics{
		GetAnalytics: &pb.GetAnalyticsOperation{ExperimentId: experimentID, Day: timestamppb.New(day)}}}
	return route(c, ctx, req, true, (*pb.RouteDataResponse).GetAnalytics)
}

// Search finds the k nearest items of collection to embedding; filter may be nil.
func (c *Client) Search(ctx context.Context, collection string, embedding []float32, k uint32, filter *pb.MetadataFilter) (*Served[*pb.SearchResult], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_SemanticSearch{
		SemanticSearch: &pb.SemanticSearchOperation{Collection: collection, Embedding: embedding, K: k, Filter: filter}}}
	return route(c, ctx, req, true, (*pb.RouteDataResponse).GetSearchResult)
}

// UpsertExperiment creates (Version 0) or updates an experiment; sent once.
func (c *Client) UpsertExperiment(ctx context.Context, e *pb.Experiment) (*Served[*pb.Experiment], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_UpsertExperiment{
		UpsertExperiment: &pb.UpsertExperimentOperation{Experiment: e}}}
	return route(c, ctx, req, false, (*pb.RouteDataResponse).GetExperiment)
}

// UpsertUserProfile creates (Version 0) or updates a user profile; sent once.
func (c *Client) UpsertUserProfile(ctx context.Context, p *pb.UserProfile) (*Served[*pb.UserProfile], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_UpsertUserProfile{
		UpsertUserProfile: &pb.UpsertUserProfileOperation{Profile: p}}}
	return route(c, ctx, req, false, (*pb.RouteDataResponse).GetUserProfile)
}

// TrackEvents records events (1..1000), each answered STORED or DUPLICATE;
// resent on UNAVAILABLE (events are deduplicated by id). Every event needs
// its Timestamp: a missing one is refused (MISSING_FIELD), never filled in.
func (c *Client) TrackEvents(ctx context.Context, events ...*pb.Event) (*Served[*pb.TrackEventsResult], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_TrackEvents{
		TrackEvents: &pb.TrackEventsOperation{Events: events}}}
	return route(c, ctx, req, true, (*pb.RouteDataResponse).GetTrackEventsResult)
}

// UpsertEmbeddings writes vectors into a collection (created on first write); sent once.
func (c *Client) UpsertEmbeddings(ctx context.Context, collection string, items []*pb.EmbeddingItem) (*Served[*pb.UpsertEmbeddingsResult], error) {
	req := &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_UpsertEmbeddings{
		UpsertEmbeddings: &pb.UpsertEmbeddingsOperation{Collection: collection, Items: items}}}
	return route(c, ctx, req, false, (*pb.RouteDataResponse).GetUpsertEmbeddingsResult)
}

// GetCached reads keys straight from the cache; misses are reported as misses.
func (c *Client) GetCached(ctx context.Context, keys ...string) (*pb.GetCachedResponse, error) {
	return invoke(c, ctx, true, func(ctx context.Context, opts ...grpc.CallOption) (*pb.GetCachedResponse, error) {
		return c.Raw.GetCached(ctx, &pb.GetCachedRequest{Keys: keys}, opts...)
	})
}

// Target is what Invalidate removes; make one with ByKeys, ByPattern,
// ByExperiment, ByUser or ByCollection.
type Target = *pb.InvalidateRequest

// ByKeys targets these keys.
func ByKeys(keys ...string) Target {
	return &pb.InvalidateRequest{Target: &pb.InvalidateRequest_Keys{Keys: &pb.KeyList{Keys: keys}}}
}

// ByPattern targets a glob inside one key family, e.g. "metrics:exp-1:*".
func ByPattern(pattern string) Target {
	return &pb.InvalidateRequest{Target: &pb.InvalidateRequest_Pattern{Pattern: pattern}}
}

// ByExperiment targets everything derived from an experiment.
func ByExperiment(experimentID string) Target {
	return &pb.InvalidateRequest{Target: &pb.InvalidateRequest_ExperimentId{ExperimentId: experimentID}}
}

// ByUser targets everything derived from a user.
func ByUser(userID string) Target {
	return &pb.InvalidateRequest{Target: &pb.InvalidateRequest_UserId{UserId: userID}}
}

// ByCollection targets every cached search of a collection.
func ByCollection(collection string) Target {
	return &pb.InvalidateRequest{Target: &pb.InvalidateRequest_Collection{Collection: collection}}
}

// Invalidate removes cache entries and answers how many keys were removed.
func (c *Client) Invalidate(ctx context.Context, target Target) (uint64, error) {
	resp, err := invoke(c, ctx, true, func(ctx context.Context, opts ...grpc.CallOption) (*pb.InvalidateResponse, error) {
		return c.Raw.Invalidate(ctx, target, opts...)
	})
	return resp.GetRemoved(), err
}

// Stats reads the server's cache counters.
func (c *Client) Stats(ctx context.Context) (*pb.StatsResponse, error) {
	return invoke(c, ctx, true, func(ctx context.Context, opts ...grpc.CallOption) (*pb.StatsResponse, error) {
		return c.Raw.Stats(ctx, &pb.StatsRequest{}, opts...)
	})
}

// Health is the standard gRPC health Check of service ("" for the server,
// "redis", "postgres", "mcprouter.v1.RouterService"): "SERVING", "NOT_SERVING"...
func (c *Client) Health(ctx context.Context, service string) (string, error) {
	resp, err := invoke(c, ctx, true, func(ctx context.Context, opts ...grpc.CallOption) (*healthpb.HealthCheckResponse, error) {
		return c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service}, opts...)
	})
	if err != nil {
		return "", err
	}
	return resp.GetStatus().String(), nil
}
