package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// Backups are raft snapshots: the bytes fsm.Persist writes (versioned and
// checksummed), taken by raft itself, so a backup is exactly the state at
// one applied index and costs the cluster what a routine snapshot costs.
// A restore seeds a fresh data dir's snapshot store with that file and a
// configuration naming only the restoring node; raft then starts from it
// as from any snapshot, and the node adds joining servers, which receive
// the state by InstallSnapshot. No FSM command is involved, so restoring
// needs nothing from the fsm package beyond its snapshot format.

// backupChunk is the size of one streamed Backup message.
const backupChunk = 256 << 10

// Snapshot takes a Raft snapshot on the node asked and reports it. When
// nothing was applied since the last snapshot, that snapshot is reported.
// Its size is what InstallSnapshot would send (the package, with the
// checkpoint's files); nothing is read to report it.
func (c *clusterService) Snapshot(ctx context.Context, _ *quorumqpb.SnapshotRequest) (*quorumqpb.SnapshotResponse, error) {
	id, err := c.n.snapshotNow(ctx)
	if err != nil {
		return nil, err
	}
	meta, err := c.n.snapStore.meta(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "snapshot %s: %v", id, err)
	}
	c.n.log.Info("snapshot taken on request", "index", meta.Index, "size", meta.Size)
	return &quorumqpb.SnapshotResponse{Index: meta.Index, Term: meta.Term, Size: meta.Size, Id: meta.ID}, nil
}

// snapshotNow takes a snapshot and returns the ID of the newest one: the
// one taken, or a later one, or the one that already holds the applied
// state when nothing was applied since.
func (n *Node) snapshotNow(ctx context.Context) (string, error) {
	err := n.await(ctx, n.raft.Snapshot(), n.timeoutFor(ctx))
	if err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return "", status.Errorf(codes.Unavailable, "snapshot: %v", err)
	}
	list, err := n.snaps.List()
	if err != nil || len(list) == 0 {
		return "", status.Errorf(codes.Internal, "no snapshot to report: %v", err)
	}
	return list[0].ID, nil
}

// Backup streams a snapshot of the leader's state. Only a ready leader
// that confirms its leadership serves it, so the backup holds every write
// acknowledged before the call.
func (c *clusterService) Backup(_ *quorumqpb.BackupRequest, stream quorumqpb.Cluster_BackupServer) error {
	ctx := stream.Context()
	if err := c.n.verifyLeader(ctx); err != nil {
		return err
	}
	id, err := c.n.snapshotNow(ctx)
	if err != nil {
		return err
	}
	meta, rc, err := c.n.snapStore.Open(id)
	if err != nil {
		return status.Errorf(codes.Internal, "open snapshot %s: %v", id, err)
	}
	defer rc.Close()
	buf := make([]byte, backupChunk)
	first := true
	for {
		k, rerr := io.ReadFull(rc, buf)
		if k > 0 || first {
			chunk := &quorumqpb.BackupChunk{Data: buf[:k]}
			if first {
				chunk.Index, chunk.Term, chunk.Size = meta.Index, meta.Term, meta.Size
				first = false
			}
			if err := stream.Send(chunk); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			return nil
		}
		if rerr != nil {
			return status.Errorf(codes.Internal, "read snapshot %s: %v", meta.ID, rerr)
		}
	}
}

// seedFromBackup writes the backup named by RestoreFrom into the (empty)
// snapshot store as the starting snapshot of a new single-voter cluster.
// The file is checked in full first (fsm.Restore verifies magic, version
// and checksum), so a damaged backup is refused before anything is
// written.
func (n *Node) seedFromBackup() error {
	path := n.cfg.RestoreFrom
	if path == "" {
		return nil
	}
	applied, hash, err := n.checkBackup(path)
	if err != nil {
		return fmt.Errorf("restore from %s: not a usable backup: %w", path, err)
	}
	index := max(applied, 1)
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(n.cfg.NodeID), Address: raft.ServerAddress(n.raftAdv)}}}
	sink, err := n.snaps.Create(raft.SnapshotVersionMax, index, 1, conf, index, n.trans)
	if err != nil {
		return fmt.Errorf("restore from %s: create snapshot: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("restore from: %w", err)
	}
	defer f.Close()
	if _, err := io.Copy(sink, f); err != nil {
		sink.Cancel()
		return fmt.Errorf("restore from %s: copy into snapshot store: %w", path, err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("restore from %s: %w", path, err)
	}
	n.log.Info("data dir seeded from backup; starting as the only voter", "file", path, "index", index, "state_hash", hash)
	return nil
}

// checkBackup restores the backup at path into a throwaway FSM and returns
// its applied index and state hash. A package (a snapshot with a
// checkpoint of the body store, checkpoint.go) is restored with a body
// store in a temporary directory of the data dir, which can hold it.
func (n *Node) checkBackup(path string) (uint64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	if !isPackage(br) {
		check := fsm.New()
		if err := check.Restore(io.NopCloser(br)); err != nil {
			return 0, "", err
		}
		return check.AppliedIndex(), check.StateHash(), nil
	}
	tmp, err := os.MkdirTemp(n.cfg.DataDir, ".backup-check-")
	if err != nil {
		return 0, "", err
	}
	defer os.RemoveAll(tmp)
	bodies, err := openBodyStoreSized(tmp, n.log, 4<<20)
	if err != nil {
		return 0, "", err
	}
	defer bodies.Close()
	check := fsm.NewWithStore(bodies)
	if err := restorePackage(br, check, bodies, ""); err != nil {
		return 0, "", err
	}
	return check.AppliedIndex(), check.StateHash(), nil
}
