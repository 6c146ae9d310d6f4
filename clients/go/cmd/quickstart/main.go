// Command quickstart drives a live mcp-router server through the Go client:
// creates an experiment, checks the server's assignments against the local
// algorithm, tracks an event twice (STORED, then DUPLICATE), reads an error's
// ErrorInfo reason, and prints Stats. It exits non-zero when anything differs
// from what the server promises, so it doubles as an end-to-end check.
//
//	go run ./cmd/quickstart -target 127.0.0.1:50051
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mcprouter/mcp-router/clients/go/assignment"
	"github.com/mcprouter/mcp-router/clients/go/client"
	pb "github.com/mcprouter/mcp-router/clients/go/gen/mcprouter/v1"
)

func main() {
	target := flag.String("target", envOr("MCPROUTER_TARGET", "127.0.0.1:50051"), "server host:port")
	experimentID := flag.String("experiment", fmt.Sprintf("go-exp-%d", time.Now().UnixNano()), "experiment id to create")
	flag.Parse()
	if err := run(*target, *experimentID); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("OK")
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func run(target, experimentID string) error {
	ctx := context.Background()
	c, err := client.Dial(target, client.WithTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()

	variants := []*pb.Variant{{Name: "control", Weight: 50}, {Name: "treatment", Weight: 50}}
	up, err := c.UpsertExperiment(ctx, &pb.Experiment{
		ExperimentId: experimentID, Name: "Go client quickstart",
		Status: pb.ExperimentStatus_EXPERIMENT_STATUS_RUNNING, Variants: variants,
	})
	if err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	exp := up.Value
	fmt.Printf("upsert %s: %s (version %d)\n", experimentID, up.Status, exp.GetVersion())
	if up.Status != pb.ServeStatus_SERVE_STATUS_STORED {
		return fmt.Errorf("upsert answered %s", up.Status)
	}

	got, err := c.GetExperiment(ctx, experimentID)
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	fmt.Printf("get %s: %s (cache key %s)\n", experimentID, got.Status, got.CacheKey)

	local := make([]assignment.Variant, len(variants))
	for i, v := range variants {
		local[i] = assignment.Variant{Name: v.Name, Weight: int64(v.Weight)}
	}
	for _, user := range []string{"alice", "bob", "carol"} {
		resp, err := c.GetAssignment(ctx, experimentID, user)
		if err != nil {
			return fmt.Errorf("assign %s: %w", user, err)
		}
		a := resp.Value
		bucket, name, err := assignment.Assign(exp.GetSalt(), user, local)
		if err != nil {
			return err
		}
		fmt.Printf("%s -> %s (bucket %d); computed locally: %s (bucket %d)\n", user, a.GetVariant(), a.GetBucket(), name, bucket)
		if int(a.GetBucket()) != bucket || a.GetVariant() != name {
			return fmt.Errorf("assignment of %s differs from the local algorithm", user)
		}
	}

	_, variant, _ := assignment.Assign(exp.GetSalt(), "alice", local)
	want := []pb.ServeStatus{pb.ServeStatus_SERVE_STATUS_STORED, pb.ServeStatus_SERVE_STATUS_DUPLICATE}
	eventID := "go-evt-" + experimentID
	for _, expected := range want {
		resp, err := c.TrackEvents(ctx, &pb.Event{
			EventId: eventID, ExperimentId: experimentID, UserId: "alice",
			Variant: variant, EventType: "conversion", Value: 1, Timestamp: timestamppb.Now(),
		})
		if err != nil {
			return fmt.Errorf("track: %w", err)
		}
		status := resp.Value.GetOutcomes()[0].GetStatus()
		fmt.Printf("track %s: %s\n", eventID, status)
		if status != expected {
			return fmt.Errorf("track answered %s, want %s", status, expected)
		}
	}

	_, err = c.GetExperiment(ctx, experimentID+"-missing")
	var rpcErr *client.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.NotFound || rpcErr.Reason == "" {
		return fmt.Errorf("a missing experiment answered %v, want NOT_FOUND with a reason", err)
	}
	fmt.Printf("missing experiment: %v\n", rpcErr)

	health, err := c.Health(ctx, "")
	if err != nil || health != "SERVING" {
		return fmt.Errorf("health answered %q, %v", health, err)
	}
	fmt.Println("health:", health)

	stats, err := c.Stats(ctx)
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	fmt.Printf("stats: hit rate %.1f%%, operations %d, dedup hits %d\n", stats.GetHitRate()*100, stats.GetTotalOperations(), stats.GetDedupHits())
	if stats.GetDedupHits() < 1 {
		return errors.New("stats counted no dedup hit")
	}
	return nil
}
