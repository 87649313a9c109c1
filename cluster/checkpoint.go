package cluster

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm"
)

// A node's own snapshot is raft's state.bin holding the FSM's index (a
// version-3 stream: records with body references, message records and
// dedup entries in segment files under segmentDir, see segments.go) and,
// beside it in the snapshot's directory, a pebble checkpoint of the body
// store (checkpointDir) and a random tag naming that checkpoint
// (tagFile). The checkpoint hard-links the store's sstables: writing it
// costs a memtable flush and a manifest copy, whatever the backlog.
//
// raft sends and restores what the snapshot store's Open returns, so Open
// packs a snapshot with a checkpoint into one self-contained stream, whose
// size is known before a byte is read (raft sends meta.Size bytes):
//
//	magic "QQSNPKG1"
//	uvarint length + the snapshot's checkpoint tag
//	uvarint file count, then per file: uvarint length + name, uvarint size
//	index length (uint64 big-endian) + the index (state.bin, with its
//	  segment files spliced in: a version-2 stream)
//	the files' bytes, in the order listed
//	CRC32C (uint32 big-endian) of every byte before it
//
// A follower's sink keeps the package as it came, so its state.bin is
// complete by itself. restorePackage reads the index, then either links
// the files of the node's own checkpoint (its tag matches the one on
// disk: a restart) or writes the package's files into a new store (an
// installed snapshot, a backup), and adopts them as the body store.
const (
	packageMagic   = "QQSNPKG1"
	checkpointDir  = "store"
	tagFile        = "store.tag"
	incomingSuffix = "-incoming"
	tagBytes       = 16
	// maxPackageFiles bounds the file list read from a package header.
	maxPackageFiles = 1 << 20
)

// CheckpointDir implements fsm.CheckpointSink: the checkpoint goes into the
// directory raft's file snapshot store is writing the snapshot into, so
// that it is renamed, kept and reaped with the snapshot.
func (c *checkedSink) CheckpointDir() string {
	dir := filepath.Join(c.store.dir, c.ID()+".tmp")
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return ""
	}
	tag := make([]byte, tagBytes)
	if _, err := rand.Read(tag); err != nil {
		return ""
	}
	// Synced, as the checkpoint's files are: a snapshot raft calls
	// complete must name its checkpoint after a power failure too.
	if err := writeFile(filepath.Join(dir, tagFile), bytes.NewReader(tag), tagBytes); err != nil {
		return ""
	}
	return filepath.Join(dir, checkpointDir)
}

// dropOlderCheckpoints removes the checkpoints of the snapshots older than
// newest: a checkpoint keeps the sstables it links after the store has
// compacted them away, so only the newest snapshot keeps one. The older
// snapshot raft retains keeps its index and metadata (all the stale
// snapshot check needs); without its checkpoint it no longer restores,
// which its Open and restore say.
func (s *snapshotStore) dropOlderCheckpoints(newest string) {
	list, err := s.List()
	if err != nil {
		return
	}
	for _, m := range list {
		if m.ID == newest {
			continue
		}
		dir := filepath.Join(s.dir, m.ID)
		_ = os.Remove(filepath.Join(dir, tagFile))
		_ = os.RemoveAll(filepath.Join(dir, checkpointDir))
		_ = os.RemoveAll(filepath.Join(dir, segmentDir))
	}
}

// pinnedBytes is the size of the files that only the newest snapshot's
// checkpoint still holds (the store compacted or deleted them).
func (s *snapshotStore) pinnedBytes() int64 {
	list, err := s.List()
	if err != nil || len(list) == 0 {
		return 0
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, list[0].ID, checkpointDir))
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 1 && filepath.Ext(e.Name()) == ".sst" {
			n += fi.Size()
		}
	}
	return n
}

// packageFile is one file of a checkpoint in a package.
type packageFile struct {
	name string
	size int64
}

// Open opens a snapshot for raft: a snapshot with a checkpoint beside it
// as a package (above), any other as it is.
func (s *snapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.FileSnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Join(s.dir, id)
	tag, err := os.ReadFile(filepath.Join(dir, tagFile))
	if errors.Is(err, os.ErrNotExist) {
		return meta, rc, nil
	}
	if err == nil {
		var index io.ReadCloser
		var size int64
		if index, size, err = openIndex(dir, rc, meta.Size); err == nil {
			rc = index
			var p *packageReader
			if p, err = openPackage(filepath.Join(dir, checkpointDir), tag, size, index); err == nil {
				m := *meta
				m.Size = p.size
				return &m, p, nil
			}
		}
	}
	rc.Close()
	return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
}

// packageReader streams a package: header, index, files, CRC.
type packageReader struct {
	parts []io.Reader
	files []*os.File
	index io.Closer
	crc   hash.Hash32
	trail []byte // the CRC once the parts are read
	size  int64
}

// packageHeader lists the checkpoint in dir and encodes the package's
// header and index length, and the size of the whole package.
func packageHeader(dir string, tag []byte, indexSize int64) ([]byte, []packageFile, int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, 0, err
	}
	hdr := append([]byte(packageMagic), binary.AppendUvarint(nil, uint64(len(tag)))...)
	hdr = append(hdr, tag...)
	var files []packageFile
	size := indexSize + 4
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return nil, nil, 0, err
		}
		files = append(files, packageFile{name: e.Name(), size: fi.Size()})
		size += fi.Size()
	}
	hdr = binary.AppendUvarint(hdr, uint64(len(files)))
	for _, f := range files {
		hdr = binary.AppendUvarint(hdr, uint64(len(f.name)))
		hdr = append(hdr, f.name...)
		hdr = binary.AppendUvarint(hdr, uint64(f.size))
	}
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(indexSize))
	return hdr, files, size + int64(len(hdr)), nil
}

func openPackage(dir string, tag []byte, indexSize int64, index io.ReadCloser) (*packageReader, error) {
	hdr, files, size, err := packageHeader(dir, tag, indexSize)
	if err != nil {
		return nil, err
	}
	p := &packageReader{index: index, crc: crc32.New(crc32.MakeTable(crc32.Castagnoli)), size: size}
	p.parts = append(p.parts, bytes.NewReader(hdr), io.LimitReader(index, indexSize))
	for _, f := range files {
		// Opened now: pebble never changes a checkpoint's files, and an
		// open file stays readable if raft reaps the snapshot meanwhile.
		fh, err := os.Open(filepath.Join(dir, f.name))
		if err != nil {
			p.Close()
			return nil, err
		}
		if st, err := fh.Stat(); err != nil || st.Size() != f.size {
			fh.Close()
			p.Close()
			return nil, fmt.Errorf("checkpoint file %s changed while opening: %v", f.name, err)
		}
		p.files = append(p.files, fh)
		p.parts = append(p.parts, io.LimitReader(fh, f.size))
	}
	return p, nil
}

// meta returns the metadata of snapshot id as Open would, with the size of
// its package, without reading it.
func (s *snapshotStore) meta(id string) (*raft.SnapshotMeta, error) {
	list, err := s.List()
	if err != nil {
		return nil, err
	}
	for _, m := range list {
		if m.ID != id {
			continue
		}
		dir := filepath.Join(s.dir, id)
		tag, err := os.ReadFile(filepath.Join(dir, tagFile))
		if errors.Is(err, os.ErrNotExist) {
			return m, nil
		}
		if err == nil {
			size := m.Size
			if size, err = indexSize(dir, size); err == nil {
				_, _, m.Size, err = packageHeader(filepath.Join(dir, checkpointDir), tag, size)
			}
		}
		return m, err
	}
	return nil, fmt.Errorf("snapshot %s not found", id)
}

func (p *packageReader) Read(b []byte) (int, error) {
	for len(p.parts) > 0 {
		n, err := p.parts[0].Read(b)
		p.crc.Write(b[:n])
		if err == io.EOF {
			p.parts = p.parts[1:]
			if len(p.parts) == 0 {
				p.trail = binary.BigEndian.AppendUint32(nil, p.crc.Sum32())
			}
			err = nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
	if len(p.trail) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.trail)
	p.trail = p.trail[n:]
	return n, nil
}

func (p *packageReader) Close() error {
	errs := []error{p.index.Close()}
	for _, f := range p.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// isPackage reports whether r, which must be able to peek, starts a
// package.
func isPackage(r *bufio.Reader) bool {
	b, err := r.Peek(len(packageMagic))
	return err == nil && string(b) == packageMagic
}

// crcReader hashes what is read through it.
type crcReader struct {
	r   io.Reader
	crc hash.Hash32
}

func (c *crcReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.crc.Write(b[:n])
	return n, err
}

func (c *crcReader) ReadByte() (byte, error) {
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return b[0], nil
}

// restorePackage restores f from a package: its index into the FSM, its
// checkpoint as the body store. snapDir is the node's snapshot directory,
// where the checkpoint of its own snapshot is linked from when the tag
// matches.
func restorePackage(r io.Reader, f *fsm.FSM, bodies *bodyStore, snapDir string) error {
	cr := &crcReader{r: r, crc: crc32.New(crc32.MakeTable(crc32.Castagnoli))}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: package: %s", fsm.ErrSnapshot, fmt.Sprintf(format, args...))
	}
	magic := make([]byte, len(packageMagic))
	if _, err := io.ReadFull(cr, magic); err != nil || string(magic) != packageMagic {
		return bad("bad magic %q", magic)
	}
	readBytes := func(what string, limit uint64) ([]byte, error) {
		n, err := binary.ReadUvarint(cr)
		if err != nil || n > limit {
			return nil, bad("%s: length %d (limit %d): %v", what, n, limit, err)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(cr, b); err != nil {
			return nil, bad("%s: %v", what, err)
		}
		return b, nil
	}
	tag, err := readBytes("tag", 64)
	if err != nil {
		return err
	}
	count, err := binary.ReadUvarint(cr)
	if err != nil || count > maxPackageFiles {
		return bad("file count %d: %v", count, err)
	}
	files := make([]packageFile, 0, count)
	for range count {
		name, err := readBytes("file name", 255)
		if err != nil {
			return err
		}
		size, err := binary.ReadUvarint(cr)
		if err != nil || size > 1<<50 {
			return bad("size of %q: %d: %v", name, size, err)
		}
		if n := string(name); n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\\\x00") {
			return bad("file name %q", name)
		}
		files = append(files, packageFile{name: string(name), size: int64(size)})
	}
	var lenBuf [8]byte
	if _, err := io.ReadFull(cr, lenBuf[:]); err != nil {
		return bad("index length: %v", err)
	}
	indexLen := int64(binary.BigEndian.Uint64(lenBuf[:]))
	local := localCheckpoint(snapDir, tag, files)
	incoming := bodies.path + incomingSuffix
	return f.RestoreCheckpoint(io.LimitReader(cr, indexLen), func() error {
		if err := os.RemoveAll(incoming); err != nil {
			return err
		}
		if err := os.MkdirAll(incoming, 0o700); err != nil {
			return err
		}
		if local != "" {
			err = linkFiles(local, incoming, files)
		} else {
			err = copyFiles(cr, incoming, files)
		}
		if err != nil {
			return err
		}
		// The files and their names must be on disk before the store is
		// adopted: pebble takes its files as durable, and the node's next
		// snapshot links them into a checkpoint that raft calls complete.
		if err := syncDir(incoming); err != nil {
			return err
		}
		if local == "" {
			want := cr.crc.Sum32()
			var sum [4]byte
			if _, err := io.ReadFull(r, sum[:]); err != nil {
				return bad("checksum: %v", err)
			}
			if got := binary.BigEndian.Uint32(sum[:]); got != want {
				return bad("checksum %08x, computed %08x", got, want)
			}
		}
		return bodies.adopt(incoming)
	})
}

// localCheckpoint returns the directory of the node's own checkpoint with
// this tag and exactly these files, or "".
func localCheckpoint(snapDir string, tag []byte, files []packageFile) string {
	if snapDir == "" || len(tag) == 0 {
		return ""
	}
	entries, err := os.ReadDir(snapDir)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		dir := filepath.Join(snapDir, e.Name())
		if t, err := os.ReadFile(filepath.Join(dir, tagFile)); err != nil || !bytes.Equal(t, tag) {
			continue
		}
		cp := filepath.Join(dir, checkpointDir)
		if slices.ContainsFunc(files, func(f packageFile) bool {
			st, err := os.Stat(filepath.Join(cp, f.name))
			return err != nil || st.Size() != f.size
		}) {
			return ""
		}
		return cp
	}
	return ""
}

// linkFiles hard-links the sstables of a checkpoint into dir and copies
// the rest (manifest, options, markers), which pebble may rewrite.
func linkFiles(from, dir string, files []packageFile) error {
	for _, f := range files {
		src, dst := filepath.Join(from, f.name), filepath.Join(dir, f.name)
		if filepath.Ext(f.name) == ".sst" {
			if err := os.Link(src, dst); err == nil {
				continue
			}
		}
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		err = writeFile(dst, in, f.size)
		in.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// copyFiles writes the package's files from r into dir.
func copyFiles(r io.Reader, dir string, files []packageFile) error {
	for _, f := range files {
		if err := writeFile(filepath.Join(dir, f.name), r, f.size); err != nil {
			return err
		}
	}
	return nil
}

// writeFile writes size bytes from r into a new file at path and syncs
// it.
func writeFile(path string, r io.Reader, size int64) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(out, r, size); err != nil {
		out.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return out.Close()
}
