package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// commandVersion is the first byte of every encoded command. A later release
// that changes the framing bumps it and keeps decoding version 1.
const commandVersion = 1

// headerLen is the version byte plus the CRC32C.
const headerLen = 1 + 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Encode frames a command for the Raft log: 1 version byte (1), the 4-byte
// big-endian CRC32C (Castagnoli) of the protobuf, then the protobuf bytes of
// cmd. Deterministic marshalling keeps the bytes identical for equal commands.
func Encode(cmd *fsmpb.Command) ([]byte, error) {
	if cmd == nil {
		return nil, fmt.Errorf("%w: nil command", ErrMalformed)
	}
	buf := make([]byte, headerLen, headerLen+proto.Size(cmd))
	buf, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(buf, cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: marshal command: %v", ErrMalformed, err)
	}
	buf[0] = commandVersion
	binary.BigEndian.PutUint32(buf[1:headerLen], crc32c(buf[headerLen:]))
	return buf, nil
}

// Decode is Encode's inverse. It rejects an unknown version, a bad checksum
// or bad protobuf with an error wrapping ErrMalformed.
func Decode(data []byte) (*fsmpb.Command, error) {
	if len(data) < headerLen {
		return nil, fmt.Errorf("%w: command is %d bytes, shorter than the %d-byte header", ErrMalformed, len(data), headerLen)
	}
	if data[0] != commandVersion {
		return nil, fmt.Errorf("%w: command version %d, this release reads version %d", ErrMalformed, data[0], commandVersion)
	}
	want := binary.BigEndian.Uint32(data[1:headerLen])
	if got := crc32c(data[headerLen:]); got != want {
		return nil, fmt.Errorf("%w: command checksum %08x, header says %08x", ErrMalformed, got, want)
	}
	cmd := new(fsmpb.Command)
	if err := proto.Unmarshal(data[headerLen:], cmd); err != nil {
		return nil, fmt.Errorf("%w: command protobuf: %v", ErrMalformed, err)
	}
	return cmd, nil
}

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
