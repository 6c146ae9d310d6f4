package client

import (
	"context"
	"math"
	"math/rand"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RetryPolicy says how UNAVAILABLE is retried, for the calls a resend
// cannot harm: reads, TrackEvents (the server deduplicates events by id and
// answers UNAVAILABLE, reason EVENTS_IN_FLIGHT, while an earlier attempt of
// the same events is pending), GetCached, Invalidate, Stats and Health. The
// upserts are sent once. Every attempt shares the call's one deadline.
type RetryPolicy struct {
	MaxAttempts    int           // attempts in all, the first included
	InitialBackoff time.Duration // upper bound of the first wait
	MaxBackoff     time.Duration // cap of every wait
	Multiplier     float64       // growth of the bound per attempt
}

// DefaultRetry is the policy of the Python and TypeScript clients.
var DefaultRetry = RetryPolicy{MaxAttempts: 4, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2}

// withRetries runs attempt until it succeeds, fails with anything but
// UNAVAILABLE, attempts run out, or the next wait (full jitter) would pass
// the context's deadline.
func withRetries[T any](ctx context.Context, policy *RetryPolicy, attempt func() (T, error)) (T, error) {
	for number := 1; ; number++ {
		resp, err := attempt()
		if err == nil || policy == nil || number >= policy.MaxAttempts || status.Code(err) != codes.Unavailable {
			return resp, err
		}
		bound := float64(policy.InitialBackoff) * math.Pow(policy.Multiplier, float64(number-1))
		wait := time.Duration(rand.Float64() * math.Min(bound, float64(policy.MaxBackoff)))
		// A retry needs time for its own round trip, not just the wait.
		if deadline, ok := ctx.Deadline(); ok && time.Now().Add(wait).After(deadline) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return resp, err
		case <-time.After(wait):
		}
	}
}
