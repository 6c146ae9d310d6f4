// Package client is the Go client of mcp-router: one typed method per
// operation of mcprouter.v1.RouterService (the surface of the Python and
// TypeScript clients), a default deadline on every call, retries on
// UNAVAILABLE where a resend is safe, an x-request-id on every call, and
// failed RPCs returned as *Error with the server's ErrorInfo reason,
// BadRequest field violations and the request id.
//
//	c, err := client.Dial("127.0.0.1:50051") // plaintext unless WithTLS
//	if err != nil { ... }
//	defer c.Close()
//	served, err := c.GetExperiment(ctx, "exp-1")
//	fmt.Println(served.Status, served.Value.GetName())
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	pb "github.com/mcprouter/mcp-router/clients/go/gen/mcprouter/v1"
)

// DefaultTimeout bounds every call whose context has no deadline.
const DefaultTimeout = 5 * time.Second

// RequestIDHeader names a call in the server's log; the server echoes it.
const RequestIDHeader = "x-request-id"

// Client calls one mcp-router server; it is safe for concurrent use.
type Client struct {
	conn     *grpc.ClientConn
	settings settings
	health   healthpb.HealthClient
	// Raw is the generated stub, for anything the wrapper does not cover.
	Raw pb.RouterServiceClient
}

type settings struct {
	tls      credentials.TransportCredentials
	token    string
	timeout  time.Duration
	retry    *RetryPolicy
	dialOpts []grpc.DialOption
}

// Option configures Dial. Options add to the defaults: plaintext, a 5 s
// deadline, DefaultRetry.
type Option func(*settings)

// WithTLS dials with TLS (e.g. credentials.NewClientTLSFromFile) instead of plaintext.
func WithTLS(creds credentials.TransportCredentials) Option {
	return func(s *settings) { s.tls = creds }
}

// WithToken sends "authorization: Bearer <token>" with every call.
func WithToken(token string) Option {
	return func(s *settings) { s.token = token }
}

// WithTimeout sets the deadline of calls whose context has none.
func WithTimeout(d time.Duration) Option {
	return func(s *settings) { s.timeout = d }
}

// WithRetry replaces DefaultRetry; nil turns retries off.
func WithRetry(policy *RetryPolicy) Option {
	return func(s *settings) { s.retry = policy }
}

// WithDialOptions adds grpc.DialOptions (interceptors, message sizes, ...)
// after the client's own; the transport stays plaintext unless WithTLS.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOpts = append(s.dialOpts, opts...) }
}

// Dial connects to target (host:port). The connection is made lazily, on
// the first call.
func Dial(target string, opts ...Option) (*Client, error) {
	policy := DefaultRetry
	s := settings{timeout: DefaultTimeout, retry: &policy}
	for _, opt := range opts {
		opt(&s)
	}
	transport := grpc.WithInsecure()
	if s.tls != nil {
		transport = grpc.WithTransportCredentials(s.tls)
	}
	conn, err := grpc.Dial(target, append([]grpc.DialOption{transport}, s.dialOpts...)...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:     conn,
		settings: s,
		health:   healthpb.NewHealthClient(conn),
		Raw:      pb.NewRouterServiceClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// prepare gives ctx the default deadline (when it has none), the token and
// a request id (unless the caller's outgoing metadata names one).
func (c *Client) prepare(ctx context.Context) (context.Context, context.CancelFunc, string) {
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, c.settings.timeout)
	}
	if c.settings.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.settings.token)
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	if ids := md.Get(RequestIDHeader); len(ids) > 0 {
		return ctx, cancel, ids[0]
	}
	id := newRequestID()
	return metadata.AppendToOutgoingContext(ctx, RequestIDHeader, id), cancel, id
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// invoke makes one logical call: attempts (when retryable) within the
// context's deadline, errors translated with the request id.
func invoke[T any](c *Client, ctx context.Context, retryable bool, call func(context.Context, ...grpc.CallOption) (T, error)) (T, error) {
	ctx, cancel, requestID := c.prepare(ctx)
	defer cancel()
	var policy *RetryPolicy
	if retryable {
		policy = c.settings.retry
	}
	var trailer metadata.MD
	resp, err := withRetries(ctx, policy, func() (T, error) {
		return call(ctx, grpc.Trailer(&trailer))
	})
	if err != nil {
		if ids := trailer.Get(RequestIDHeader); len(ids) > 0 {
			requestID = ids[0]
		}
		return resp, translate(err, requestID)
	}
	return resp, nil
}
