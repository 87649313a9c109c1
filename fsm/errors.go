package fsm

import (
	"errors"
	"fmt"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// Errors returned by the read API and wrapped by ResultError. Each matches
// one fsmpb.ErrorCode.
var (
	ErrMalformed       = errors.New("fsm: malformed command")
	ErrInvalidArgument = errors.New("fsm: invalid argument")
	ErrQueueNotFound   = errors.New("fsm: queue not found")
	ErrQueueExists     = errors.New("fsm: queue exists")
	ErrQueueFull       = errors.New("fsm: queue full")
	ErrLeaseLost       = errors.New("fsm: lease lost")
	ErrUnknownMessage  = errors.New("fsm: unknown message")
	ErrOutOfOrder      = errors.New("fsm: out of order")
	// ErrSnapshot wraps every reason Restore rejects a snapshot.
	ErrSnapshot = errors.New("fsm: bad snapshot")
)

var codeErrors = map[fsmpb.ErrorCode]error{
	fsmpb.ErrorCode_MALFORMED:        ErrMalformed,
	fsmpb.ErrorCode_INVALID_ARGUMENT: ErrInvalidArgument,
	fsmpb.ErrorCode_QUEUE_NOT_FOUND:  ErrQueueNotFound,
	fsmpb.ErrorCode_QUEUE_EXISTS:     ErrQueueExists,
	fsmpb.ErrorCode_QUEUE_FULL:       ErrQueueFull,
	fsmpb.ErrorCode_LEASE_LOST:       ErrLeaseLost,
	fsmpb.ErrorCode_UNKNOWN_MESSAGE:  ErrUnknownMessage,
	fsmpb.ErrorCode_OUT_OF_ORDER:     ErrOutOfOrder,
}

// cmdError is a command failure: a code for the Result and a message that
// names the field and the limit.
type cmdError struct {
	code fsmpb.ErrorCode
	msg  string
}

func (e *cmdError) Error() string { return e.msg }

func fail(code fsmpb.ErrorCode, format string, args ...any) *cmdError {
	return &cmdError{code: code, msg: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *cmdError {
	return fail(fsmpb.ErrorCode_INVALID_ARGUMENT, format, args...)
}

func notFound(queue string) *cmdError {
	return fail(fsmpb.ErrorCode_QUEUE_NOT_FOUND, "queue %q does not exist", queue)
}

// ResultError turns a Result's error into a Go error wrapping the sentinel
// of its code (errors.Is(err, ErrQueueFull) ...), or nil when the command
// succeeded.
func ResultError(res *fsmpb.Result) error {
	e := res.GetError()
	if e == nil || e.GetCode() == fsmpb.ErrorCode_OK {
		return nil
	}
	sentinel, ok := codeErrors[e.GetCode()]
	if !ok {
		return fmt.Errorf("fsm: error code %d: %s", e.GetCode(), e.GetMessage())
	}
	return fmt.Errorf("%w: %s", sentinel, e.GetMessage())
}
