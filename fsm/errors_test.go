package fsm

import (
	"errors"
	"testing"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

func TestResultError(t *testing.T) {
	if err := ResultError(&fsmpb.Result{}); err != nil {
		t.Fatalf("success: %v", err)
	}
	err := ResultError(&fsmpb.Result{Error: &fsmpb.Error{Code: fsmpb.ErrorCode_QUEUE_FULL, Message: "full"}})
	if !errors.Is(err, ErrQueueFull) {
		t.Fatalf("%v does not wrap ErrQueueFull", err)
	}
}
