// Command conformance runs the conformance scenario
// (clients/conformance/scenario.json) through the Go client; the twin of
// clients/conformance/run_python.py and clients/typescript/conformance/run.ts.
//
//	go run ./cmd/conformance -target 127.0.0.1:50051 -scenario ../conformance/scenario.json
//
// It prints one line per step and "conformance: N passed, M failed", and
// exits 1 on any failure.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/mcprouter/mcp-router/clients/go/client"
	pb "github.com/mcprouter/mcp-router/clients/go/gen/mcprouter/v1"
)

type step struct {
	Name   string                 `json:"name"`
	Op     string                 `json:"op"`
	Input  json.RawMessage        `json:"input"`
	Expect map[string]interface{} `json:"expect"`
}

type outcome map[string]interface{}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server host:port")
	path := flag.String("scenario", "../conformance/scenario.json", "the scenario file")
	flag.Parse()
	failed, err := run(*target, *path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

func variables() map[string]string {
	hour := time.Now().UTC().Truncate(time.Hour)
	day := time.Date(hour.Year(), hour.Month(), hour.Day(), 0, 0, 0, 0, time.UTC)
	var b [4]byte
	_, _ = rand.Read(b[:])
	return map[string]string{
		"run":            "go-" + hex.EncodeToString(b[:]),
		"hour":           hour.Format(time.RFC3339),
		"hour_minus_30m": hour.Add(-30 * time.Minute).Format(time.RFC3339),
		"day":            day.Format(time.RFC3339),
		"day_key":        day.Format("20060102"),
		"day_plus_1h":    day.Add(time.Hour).Format(time.RFC3339),
	}
}

func run(target, path string) (bool, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	names := variables()
	text := string(raw)
	for name, value := range names {
		text = strings.ReplaceAll(text, "${"+name+"}", value)
	}
	var scenario struct {
		Steps []step `json:"steps"`
	}
	if err := json.Unmarshal([]byte(text), &scenario); err != nil {
		return false, err
	}
	c, err := client.Dial(target, client.WithTimeout(15*time.Second))
	if err != nil {
		return false, err
	}
	defer c.Close()
	passed, failed := 0, 0
	for i, s := range scenario.Steps {
		out, err := call(context.Background(), c, s.Op, s.Input)
		var rpcErr *client.Error
		if errors.As(err, &rpcErr) {
			out = failure(rpcErr)
		} else if err != nil {
			return false, fmt.Errorf("step %d (%s): %w", i+1, s.Name, err)
		}
		shown := fmt.Sprint(first(out["code"], out["status"], "ok"))
		if reason, _ := out["reason"].(string); reason != "" {
			shown += " " + reason
		}
		if problem := check(out, s.Expect); problem == "" {
			passed++
			fmt.Printf("ok   %2d %s: %s\n", i+1, s.Name, shown)
		} else {
			failed++
			fmt.Printf("FAIL %2d %s: %s\n", i+1, s.Name, problem)
		}
	}
	fmt.Printf("conformance (go, run %s): %d passed, %d failed\n", names["run"], passed, failed)
	return failed > 0, nil
}

func first(values ...interface{}) interface{} {
	for _, v := range values {
		if v != nil {
			return v
		}
	}
	return nil
}

// asJSON is proto JSON (names as in the .proto, defaults emitted, 64-bit
// integers as strings), decoded for comparison.
func asJSON(m proto.Message) interface{} {
	data, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	var out interface{}
	if err := json.Unmarshal(data, &out); err != nil {
		panic(err)
	}
	return out
}

func served[T proto.Message](s *client.Served[T], err error) (outcome, error) {
	if err != nil {
		return nil, err
	}
	status := strings.TrimPrefix(s.Status.String(), "SERVE_STATUS_")
	return outcome{"status": status, "cache_key": s.CacheKey, "value": asJSON(s.Value)}, nil
}

func value(m proto.Message, err error) (outcome, error) {
	if err != nil {
		return nil, err
	}
	return outcome{"value": asJSON(m)}, nil
}

// call makes the SDK call of op; input is the proto JSON of the operation message.
func call(ctx context.Context, c *client.Client, op string, input json.RawMessage) (outcome, error) {
	parse := func(m proto.Message) proto.Message {
		if err := protojson.Unmarshal(input, m); err != nil {
			panic(fmt.Sprintf("%s input: %v", op, err))
		}
		return m
	}
	switch op {
	case "get_experiment":
		in := parse(&pb.GetExperimentOperation{}).(*pb.GetExperimentOperation)
		return served(c.GetExperiment(ctx, in.GetExperimentId()))
	case "get_assignment":
		in := parse(&pb.GetAssignmentOperation{}).(*pb.GetAssignmentOperation)
		return served(c.GetAssignment(ctx, in.GetExperimentId(), in.GetUserId()))
	case "get_user_profile":
		in := parse(&pb.GetUserProfileOperation{}).(*pb.GetUserProfileOperation)
		return served(c.GetUserProfile(ctx, in.GetUserId()))
	case "get_event_metrics":
		in := parse(&pb.GetEventMetricsOperation{}).(*pb.GetEventMetricsOperation)
		return served(c.GetEventMetrics(ctx, in.GetExperimentId(), in.GetVariant(), in.GetMetric(), in.GetHour().AsTime()))
	case "get_analytics":
		in := parse(&pb.GetAnalyticsOperation{}).(*pb.GetAnalyticsOperation)
		return served(c.GetAnalytics(ctx, in.GetExperimentId(), in.GetDay().AsTime()))
	case "search":
		in := parse(&pb.SemanticSearchOperation{}).(*pb.SemanticSearchOperation)
		return served(c.Search(ctx, in.GetCollection(), in.GetEmbedding(), in.GetK(), in.GetFilter()))
	case "upsert_experiment":
		in := parse(&pb.UpsertExperimentOperation{}).(*pb.UpsertExperimentOperation)
		return served(c.UpsertExperiment(ctx, in.GetExperiment()))
	case "upsert_user_profile":
		in := parse(&pb.UpsertUserProfileOperation{}).(*pb.UpsertUserProfileOperation)
		return served(c.UpsertUserProfile(ctx, in.GetProfile()))
	case "track_events":
		in := parse(&pb.TrackEventsOperation{}).(*pb.TrackEventsOperation)
		return served(c.TrackEvents(ctx, in.GetEvents()...))
	case "upsert_embeddings":
		in := parse(&pb.UpsertEmbeddingsOperation{}).(*pb.UpsertEmbeddingsOperation)
		return served(c.UpsertEmbeddings(ctx, in.GetCollection(), in.GetItems()))
	case "get_cached":
		in := parse(&pb.GetCachedRequest{}).(*pb.GetCachedRequest)
		return value(c.GetCached(ctx, in.GetKeys()...))
	case "invalidate":
		in := parse(&pb.InvalidateRequest{}).(*pb.InvalidateRequest)
		removed, err := c.Invalidate(ctx, in)
		return value(&pb.InvalidateResponse{Removed: removed}, err)
	case "stats":
		return value(c.Stats(ctx))
	case "health":
		var in struct {
			Service string `json:"service"`
		}
		_ = json.Unmarshal(input, &in)
		status, err := c.Health(ctx, in.Service)
		if err != nil {
			return nil, err
		}
		return outcome{"value": status}, nil
	}
	return nil, fmt.Errorf("unknown op %q", op)
}

func failure(e *client.Error) outcome {
	out := outcome{"code": e.StatusName(), "reason": e.Reason, "field": "", "field_reason": ""}
	if len(e.FieldViolations) > 0 {
		out["field"], out["field_reason"] = e.FieldViolations[0].Field, e.FieldViolations[0].Reason
	}
	return out
}

// contains tells whether expected is a subset of actual: object keys
// recursively, arrays element-wise.
func contains(actual, expected interface{}) bool {
	switch want := expected.(type) {
	case map[string]interface{}:
		got, ok := actual.(map[string]interface{})
		if !ok {
			return false
		}
		for k, v := range want {
			if a, present := got[k]; !present || !contains(a, v) {
				return false
			}
		}
		return true
	case []interface{}:
		got, ok := actual.([]interface{})
		if !ok || len(got) < len(want) {
			return false
		}
		for i, v := range want {
			if !contains(got[i], v) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(actual, expected)
}

func check(out outcome, expect map[string]interface{}) string {
	_, wantsError := expect["code"]
	_, isError := out["code"]
	if wantsError && !isError {
		return fmt.Sprintf("expected %v, got success %v", expect["code"], out["status"])
	}
	if !wantsError && isError {
		return fmt.Sprintf("expected success, got %v %v", out["code"], out["reason"])
	}
	for name, want := range expect {
		if name == "value" {
			if !contains(out["value"], want) {
				got, _ := json.Marshal(out["value"])
				w, _ := json.Marshal(want)
				return fmt.Sprintf("value %s lacks %s", got, w)
			}
		} else if !reflect.DeepEqual(out[name], want) {
			return fmt.Sprintf("%s %v, expected %v", name, out[name], want)
		}
	}
	return ""
}
