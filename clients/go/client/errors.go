package client

import (
	"fmt"
	"strings"

	protov1 "github.com/golang/protobuf/proto"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// Error is a failed RPC with the server's google.rpc details decoded: every
// mcp-router error carries an ErrorInfo (domain "mcprouter.v1", a stable
// UPPER_SNAKE reason such as EXPERIMENT_NOT_FOUND or INVALID_ID, values in
// metadata); INVALID_ARGUMENT also carries a BadRequest with one field
// violation per bad field, each with its own reason.
type Error struct {
	Code            codes.Code
	Message         string
	Reason          string
	Domain          string
	Metadata        map[string]string
	FieldViolations []FieldViolation
	// RequestID is the call's x-request-id (the server's echo, else the one
	// sent): quote it to find the call in the server log.
	RequestID string
}

// FieldViolation is one bad field of a request.
type FieldViolation struct {
	Field       string // e.g. get_experiment.experiment_id
	Description string // why the value was refused
	Reason      string // the kind of problem, e.g. INVALID_ID, HOUR_NOT_TRUNCATED
}

// StatusName is the canonical name of the code, e.g. NOT_FOUND (as Python
// and TypeScript spell it).
func (e *Error) StatusName() string { return statusName(e.Code) }

// Error reads "NOT_FOUND (EXPERIMENT_NOT_FOUND): ... [request_id=...]"; a
// reason that only repeats the code is left out.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.StatusName())
	if e.Reason != "" && e.Reason != e.StatusName() {
		fmt.Fprintf(&b, " (%s)", e.Reason)
	}
	fmt.Fprintf(&b, ": %s", e.Message)
	if e.RequestID != "" {
		fmt.Fprintf(&b, " [request_id=%s]", e.RequestID)
	}
	return b.String()
}

var statusNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

func statusName(code codes.Code) string {
	if name, ok := statusNames[code]; ok {
		return name
	}
	return code.String()
}

// translate turns a gRPC status error into *Error; other errors pass through.
func translate(err error, requestID string) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	out := &Error{Code: st.Code(), Message: st.Message(), RequestID: requestID}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			if out.Reason == "" {
				out.Reason, out.Domain, out.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out.FieldViolations = append(out.FieldViolations, FieldViolation{
					Field: v.GetField(), Description: v.GetDescription(), Reason: violationReason(v),
				})
			}
		}
	}
	return out
}

// violationReason reads FieldViolation.reason (field 3): a known field in
// newer genproto, an unknown one in the 2020 genproto Debian ships.
func violationReason(v *errdetails.BadRequest_FieldViolation) string {
	m := protov1.MessageReflect(v)
	if fd := m.Descriptor().Fields().ByNumber(3); fd != nil {
		return m.Get(fd).String()
	}
	raw := m.GetUnknown()
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return ""
		}
		raw = raw[n:]
		if num == 3 && typ == protowire.BytesType {
			value, m := protowire.ConsumeBytes(raw)
			if m < 0 {
				return ""
			}
			return string(value)
		}
		m := protowire.ConsumeFieldValue(num, typ, raw)
		if m < 0 {
			return ""
		}
		raw = raw[m:]
	}
	return ""
}
