package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// SnapshotInfo describes a Raft snapshot.
type SnapshotInfo struct {
	ID    string // in the node's snapshot store
	Index uint64 // last log index the snapshot covers
	Term  uint64
	Size  int64 // bytes
}

// Snapshot asks the leader to take a Raft snapshot now, compacting its
// log, and describes it. Harmless to repeat.
func (c *Client) Snapshot(ctx context.Context) (SnapshotInfo, error) {
	var resp *quorumqpb.SnapshotResponse
	err := c.call(ctx, "Snapshot", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewClusterClient(cc).Snapshot(ctx, &quorumqpb.SnapshotRequest{})
		return err
	}, nil)
	return SnapshotInfo{ID: resp.GetId(), Index: resp.GetIndex(), Term: resp.GetTerm(), Size: resp.GetSize()}, err
}

// backupTimeout is the longest one backup stream may take beyond the
// client's attempt timeout; ctx still bounds it.
const backupTimeout = time.Hour

// Backup streams a consistent snapshot of the leader's state into w (the
// format `quorumq server --restore-from` reads) and describes it. A
// refusal before the first byte (no leader yet) is retried like any call;
// a failure after bytes were written is returned, since w now holds part
// of a backup: start again with an empty w.
func (c *Client) Backup(ctx context.Context, w io.Writer) (SnapshotInfo, error) {
	var info SnapshotInfo
	var written int64
	err := c.call(ctx, "Backup", notIdempotent, backupTimeout, func(ctx context.Context, cc *grpc.ClientConn) error {
		stream, err := quorumqpb.NewClusterClient(cc).Backup(ctx, &quorumqpb.BackupRequest{})
		if err != nil {
			return err
		}
		for first := true; ; first = false {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				if first {
					return errors.New("backup stream ended before its first chunk")
				}
				return nil
			}
			if err != nil {
				if written > 0 {
					return fmt.Errorf("backup broke off after %d of %d bytes: %w", written, info.Size, err)
				}
				return err
			}
			if first {
				info = SnapshotInfo{Index: chunk.GetIndex(), Term: chunk.GetTerm(), Size: chunk.GetSize()}
			}
			n, err := w.Write(chunk.GetData())
			written += int64(n)
			if err != nil {
				return fmt.Errorf("write backup: %w", err)
			}
		}
	}, nil)
	if err != nil {
		return info, err
	}
	if written != info.Size {
		return info, fmt.Errorf("backup: received %d bytes, the snapshot has %d", written, info.Size)
	}
	return info, nil
}
