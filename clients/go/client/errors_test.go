package client

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

func TestErrorNamesTheProblemOnce(t *testing.T) {
	violation := &errdetails.BadRequest_FieldViolation{Field: "get_event_metrics.hour", Description: "must be truncated"}
	// FieldViolation.reason (field 3) as a newer server sends it: unknown to this genproto.
	unknown := protowire.AppendTag(nil, 3, protowire.BytesType)
	unknown = protowire.AppendString(unknown, "HOUR_NOT_TRUNCATED")
	violation.XXX_unrecognized = unknown
	st, err := status.New(codes.InvalidArgument, "invalid request").WithDetails(
		&errdetails.ErrorInfo{Reason: "HOUR_NOT_TRUNCATED", Domain: "mcprouter.v1"},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{violation}},
	)
	if err != nil {
		t.Fatal(err)
	}
	e := translate(st.Err(), "rid-1").(*Error)
	if got, want := e.Error(), "INVALID_ARGUMENT (HOUR_NOT_TRUNCATED): invalid request [request_id=rid-1]"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	if e.FieldViolations[0].Reason != "HOUR_NOT_TRUNCATED" || e.FieldViolations[0].Field != "get_event_metrics.hour" {
		t.Fatalf("violation %+v", e.FieldViolations[0])
	}
	plain := translate(status.New(codes.InvalidArgument, "bad").Err(), "").(*Error)
	plain.Reason = "INVALID_ARGUMENT"
	if got := plain.Error(); got != "INVALID_ARGUMENT: bad" {
		t.Fatalf("a reason equal to the code is printed again: %q", got)
	}
}
