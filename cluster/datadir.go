package cluster

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Files of a data dir.
const (
	identityFile = "node.json" // which node this data dir belongs to
	raftDBFile   = "raft.db"   // raft-boltdb: log and stable store
)

// ErrDataDir is wrapped by every error about a data dir that must not be
// used: corrupt, foreign, or locked by another process.
var ErrDataDir = errors.New("unusable data dir")

// identity is the content of node.json.
type identity struct {
	Format    int       `json:"format"`
	NodeID    string    `json:"node_id"`
	CreatedAt time.Time `json:"created_at"`
}

const identityFormat = 1

// prepareDataDir creates dir if needed and checks that it belongs to nodeID
// and that its bolt file is whole. It returns whether the dir is new (no
// identity file yet). The identity file itself is written by
// writeIdentity once the stores opened, so a dir that crashed halfway
// through its first start is still recognised as new.
func prepareDataDir(dir, nodeID string) (fresh bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("%w: create %s: %v", ErrDataDir, dir, err)
	}
	idPath := filepath.Join(dir, identityFile)
	dbPath := filepath.Join(dir, raftDBFile)
	data, err := os.ReadFile(idPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if st, err := os.Stat(dbPath); err == nil && st.Size() > 0 {
			return false, fmt.Errorf("%w: %s exists but %s does not: not a quorumq data dir, or written by another program", ErrDataDir, dbPath, idPath)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("%w: read %s: %v", ErrDataDir, idPath, err)
	}
	var id identity
	if err := json.Unmarshal(data, &id); err != nil {
		return false, fmt.Errorf("%w: %s is corrupt: %v", ErrDataDir, idPath, err)
	}
	if id.Format != identityFormat {
		return false, fmt.Errorf("%w: %s has format %d, this build reads format %d", ErrDataDir, idPath, id.Format, identityFormat)
	}
	if id.NodeID != nodeID {
		return false, fmt.Errorf("%w: %s says this data dir belongs to node %q, not %q; start it with --node-id %s or use another data dir", ErrDataDir, idPath, id.NodeID, nodeID, id.NodeID)
	}
	if err := checkBoltFile(dbPath); err != nil {
		return false, err
	}
	return false, nil
}

// writeIdentity records nodeID in dir's identity file (write, fsync, rename).
func writeIdentity(dir, nodeID string) error {
	data, err := json.MarshalIndent(identity{Format: identityFormat, NodeID: nodeID, CreatedAt: time.Now().UTC()}, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, identityFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("%w: write %s: %v", ErrDataDir, tmp, err)
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("%w: write %s: %v", ErrDataDir, tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("%w: sync %s: %v", ErrDataDir, tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: close %s: %v", ErrDataDir, tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("%w: rename %s: %v", ErrDataDir, tmp, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Bolt's on-disk meta page, as bbolt writes it (internal/common/meta.go):
// after the 16-byte page header come magic, version, page size, flags, the
// root bucket (root page, sequence), the freelist page, the high-water page
// ID, the transaction ID and an FNV-64a checksum of the fields before it.
const (
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	boltPageHeader  = 16
	boltMetaSumSpan = 56 // bytes of meta covered by the checksum
)

type boltMeta struct {
	pageSize  uint32
	highWater uint64
	txid      uint64
}

// checkBoltFile verifies that a bolt file holds every page its meta page
// promises. bbolt memory-maps the file and trusts that promise, so opening
// a truncated file faults the process (SIGSEGV) instead of returning an
// error; this check turns that into an error naming the file.
func checkBoltFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // a data dir whose first start never got as far as the store
	}
	if err != nil {
		return fmt.Errorf("%w: open %s: %v", ErrDataDir, path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: stat %s: %v", ErrDataDir, path, err)
	}
	size := st.Size()
	if size == 0 {
		return fmt.Errorf("%w: %s is empty (truncated?); restore it from a backup or remove the data dir and rejoin the node as a new server", ErrDataDir, path)
	}
	m0, err0 := readBoltMeta(f, 0)
	var best *boltMeta
	if err0 == nil {
		best = &m0
		if m1, err1 := readBoltMeta(f, int64(m0.pageSize)); err1 == nil && m1.txid > m0.txid {
			best = &m1
		}
	} else {
		// Meta 0 is damaged: bbolt then falls back to meta 1, which sits one
		// page further; try the page sizes bbolt can have written.
		for ps := int64(1024); ps <= 64*1024; ps *= 2 {
			if m1, err1 := readBoltMeta(f, ps); err1 == nil && int64(m1.pageSize) == ps {
				best = &m1
				break
			}
		}
	}
	if best == nil {
		return fmt.Errorf("%w: %s is not a valid bolt database (%v); restore it from a backup or remove the data dir and rejoin the node as a new server", ErrDataDir, path, err0)
	}
	need := int64(best.highWater) * int64(best.pageSize)
	if size < need {
		return fmt.Errorf("%w: %s is truncated: %d bytes on disk, its meta page needs %d (%d pages of %d bytes); restore it from a backup or remove the data dir and rejoin the node as a new server",
			ErrDataDir, path, size, need, best.highWater, best.pageSize)
	}
	return nil
}

func readBoltMeta(f *os.File, off int64) (boltMeta, error) {
	buf := make([]byte, boltPageHeader+boltMetaSumSpan+8)
	if _, err := f.ReadAt(buf, off); err != nil {
		if errors.Is(err, io.EOF) {
			return boltMeta{}, fmt.Errorf("meta page at offset %d is cut off", off)
		}
		return boltMeta{}, err
	}
	m := buf[boltPageHeader:]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, fmt.Errorf("meta page at offset %d has no bolt magic", off)
	}
	if v := le.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("meta page at offset %d has version %d, want %d", off, v, boltVersion)
	}
	h := fnv.New64a()
	h.Write(m[:boltMetaSumSpan])
	if h.Sum64() != le.Uint64(m[boltMetaSumSpan:]) {
		return boltMeta{}, fmt.Errorf("meta page at offset %d fails its checksum", off)
	}
	ps := le.Uint32(m[8:])
	if ps < 512 || ps&(ps-1) != 0 {
		return boltMeta{}, fmt.Errorf("meta page at offset %d has page size %d", off, ps)
	}
	return boltMeta{pageSize: ps, highWater: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, nil
}
