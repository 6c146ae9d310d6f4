// Package client is a small typed wrapper over the generated
// mcprouter.v1.RouterService stub: one method per common operation, a
// default deadline on every call, and failed RPCs returned as *Error with
// the server's ErrorInfo reason and BadRequest field violations.
//
//	c, err := client.Dial("127.0.0.1:50051")
//	if err != nil { ... }
//	defer c.Close()
//	resp, err := c.GetExperiment(ctx, "exp-1")
package client

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "mcprouter/gen/mcprouter/v1"
)

// DefaultTimeout bounds every call whose context has no deadline.
const DefaultTimeout = 5 * time.Second

// Client calls one mcp-router server.
type Client struct {
	conn *grpc.ClientConn
	// Raw is the generated stub, for anything the wrapper does not cover.
	Raw pb.RouterServiceClient
}

// Dial connects in plaintext to target (host:port); pass
// grpc.WithTransportCredentials(...) in opts for TLS.
func Dial(target string, opts ...grpc.DialOption) (*Client, error) {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithInsecure()}
	}
	conn, err := grpc.Dial(target, opts...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, Raw: pb.NewRouterServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// RouteData sends any RouteData request.
func (c *Client) RouteData(ctx context.Context, req *pb.RouteDataRequest) (*pb.RouteDataResponse, error) {
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	resp, err := c.Raw.RouteData(ctx, req)
	return resp, translate(err)
}

// GetExperiment reads an experiment (cached under experiment:{id}).
func (c *Client) GetExperiment(ctx context.Context, experimentID string) (*pb.RouteDataResponse, error) {
	return c.RouteData(ctx, &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_GetExperiment{
		GetExperiment: &pb.GetExperimentOperation{ExperimentId: experimentID}}})
}

// UpsertExperiment creates (Version 0) or updates an experiment.
func (c *Client) UpsertExperiment(ctx context.Context, e *pb.Experiment) (*pb.RouteDataResponse, error) {
	return c.RouteData(ctx, &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_UpsertExperiment{
		UpsertExperiment: &pb.UpsertExperimentOperation{Experiment: e}}})
}

// GetAssignment is the user's sticky variant, assigned on first request.
func (c *Client) GetAssignment(ctx context.Context, experimentID, userID string) (*pb.RouteDataResponse, error) {
	return c.RouteData(ctx, &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_GetAssignment{
		GetAssignment: &pb.GetAssignmentOperation{ExperimentId: experimentID, UserId: userID}}})
}

// TrackEvents records events; an event without a timestamp gets the current time.
func (c *Client) TrackEvents(ctx context.Context, events ...*pb.Event) (*pb.RouteDataResponse, error) {
	now := timestamppb.Now()
	for _, e := range events {
		if e.Timestamp == nil {
			e.Timestamp = now
		}
	}
	return c.RouteData(ctx, &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_TrackEvents{
		TrackEvents: &pb.TrackEventsOperation{Events: events}}})
}

// GetAnalytics reads one experiment's analytics for the UTC day of day.
func (c *Client) GetAnalytics(ctx context.Context, experimentID string, day time.Time) (*pb.RouteDataResponse, error) {
	return c.RouteData(ctx, &pb.RouteDataRequest{Operation: &pb.RouteDataRequest_GetAnalytics{
		GetAnalytics: &pb.GetAnalyticsOperation{ExperimentId: experimentID, Day: timestamppb.New(day.UTC().Truncate(24 * time.Hour))}}})
}

// GetCached reads keys straight from the cache.
func (c *Client) GetCached(ctx context.Context, keys ...string) (*pb.GetCachedResponse, error) {
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	resp, err := c.Raw.GetCached(ctx, &pb.GetCachedRequest{Keys: keys})
	return resp, translate(err)
}

// InvalidateExperiment removes everything cached about an experiment.
func (c *Client) InvalidateExperiment(ctx context.Context, experimentID string) (uint64, error) {
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	resp, err := c.Raw.Invalidate(ctx, &pb.InvalidateRequest{Target: &pb.InvalidateRequest_ExperimentId{ExperimentId: experimentID}})
	return resp.GetRemoved(), translate(err)
}

// Stats reads the server's cache counters.
func (c *Client) Stats(ctx context.Context) (*pb.StatsResponse, error) {
	ctx, cancel := withDeadline(ctx)
	defer cancel()
	resp, err := c.Raw.Stats(ctx, &pb.StatsRequest{})
	return resp, translate(err)
}
