package fsm

import (
	"encoding/binary"
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

// Verify checks an encoded command's version and checksum without
// decoding it: what a bit flipped on disk breaks. It returns Decode's
// errors for them.
func Verify(data []byte) error {
	if len(data) < headerLen {
		return fmt.Errorf("%w: command is %d bytes, shorter than the %d-byte header", ErrMalformed, len(data), headerLen)
	}
	if data[0] != commandVersion {
		return fmt.Errorf("%w: command version %d, this release reads version %d", ErrMalformed, data[0], commandVersion)
	}
	want := binary.BigEndian.Uint32(data[1:headerLen])
	if got := crc32c(data[headerLen:]); got != want {
		return fmt.Errorf("%w: command checksum %08x, header says %08x", ErrMalformed, got, want)
	}
	return nil
}

// Decode is Encode's inverse. It rejects an unknown version, a bad checksum
// or bad protobuf with an error wrapping ErrMalformed.
func Decode(data []byte) (*fsmpb.Command, error) {
	if err := Verify(data); err != nil {
		return nil, err
	}
	cmd := new(fsmpb.Command)
	if err := proto.Unmarshal(data[headerLen:], cmd); err != nil {
		return nil, fmt.Errorf("%w: command protobuf: %v", ErrMalformed, err)
	}
	return cmd, nil
}
