package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/quorumq/quorumq/fsm"
)

// A node's own snapshot keeps its message records in segment files, one
// per chunk of a queue's ids, in segmentDir beside the index (state.bin,
// then a version-3 index: see fsm/segments.go). A chunk no command changed
// since the last snapshot is hard-linked from that snapshot's directory,
// so a snapshot writes what changed since the last one, not the backlog.
// Open splices the files back into the index: raft, a backup and a
// restore read a version-2 stream, as before.
const segmentDir = "segs"

var _ fsm.SegmentSink = (*checkedSink)(nil)

// CreateSegment implements fsm.SegmentSink.
func (c *checkedSink) CreateSegment(name string) (io.WriteCloser, error) {
	if !validSegmentName(name) {
		return nil, fmt.Errorf("segment name %q", name)
	}
	dir := filepath.Join(c.store.dir, c.ID()+".tmp", segmentDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// A link of an earlier snapshot's file may be here already (the
	// chunk's other file failed to link): unlink it, never write into it.
	path := filepath.Join(dir, name)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	c.segments = true
	return &syncedFile{f}, nil
}

// LinkSegment implements fsm.SegmentSink: it links the file from the
// newest completed snapshot that holds it.
func (c *checkedSink) LinkSegment(name string) bool {
	if !validSegmentName(name) {
		return false
	}
	if c.earlier == nil {
		c.earlier = []string{}
		if list, err := c.store.List(); err == nil {
			for _, m := range list {
				if m.ID != c.ID() {
					c.earlier = append(c.earlier, filepath.Join(c.store.dir, m.ID, segmentDir))
				}
			}
		}
	}
	dir := filepath.Join(c.store.dir, c.ID()+".tmp", segmentDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false
	}
	for _, from := range c.earlier {
		if os.Link(filepath.Join(from, name), filepath.Join(dir, name)) == nil {
			c.segments = true
			return true
		}
	}
	return false
}

// syncSegments makes the names of the segment files durable before raft
// calls the snapshot complete (each file synced itself, or was linked
// from a snapshot whose files were). Once: a sink may be closed twice,
// and the second Close finds the directory renamed.
func (c *checkedSink) syncSegments() error {
	if !c.segments {
		return nil
	}
	c.segments = false
	return syncDir(filepath.Join(c.store.dir, c.ID()+".tmp", segmentDir))
}

func validSegmentName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= 255 && !strings.ContainsAny(name, "/\\\x00")
}

// syncedFile syncs the file when it is closed.
type syncedFile struct{ *os.File }

func (f *syncedFile) Close() error {
	err := f.Sync()
	return errors.Join(err, f.File.Close())
}

// openIndex returns the index of the snapshot in dir as the stream a
// restore reads, and its size: state.bin (rc, of size) as it is, or for a
// version-3 index the version-2 stream SpliceSegments makes of it and
// its segment files.
func openIndex(dir string, rc io.ReadCloser, size int64) (io.ReadCloser, int64, error) {
	br := bufio.NewReaderSize(rc, 1<<16)
	hdr, _ := br.Peek(12)
	if !fsm.IsSegmented(hdr) {
		return readCloser{br, rc}, size, nil
	}
	spliced, err := indexSize(dir, size)
	if err != nil {
		return nil, 0, err
	}
	// Every segment file is opened now, as the checkpoint's files are: a
	// snapshot taken while this one is sent removes this one's segments,
	// and an open file stays readable.
	segs := filepath.Join(dir, segmentDir)
	entries, err := os.ReadDir(segs)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, 0, err
	}
	files := make(map[string]*os.File, len(entries))
	all := closers{}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(segs, e.Name()))
		if err != nil {
			_ = all.Close()
			return nil, 0, err
		}
		files[e.Name()] = f
		all = append(all, f)
	}
	r := fsm.SpliceSegments(br, func(name string) (io.ReadCloser, error) {
		f, ok := files[name]
		if !ok {
			return nil, fmt.Errorf("open %s: %w", filepath.Join(segs, name), os.ErrNotExist)
		}
		delete(files, name)
		return io.NopCloser(f), nil // closed with the index
	})
	return readCloser{r, append(closers{r, rc}, all...)}, spliced, nil
}

// segmentedIndex opens the state.bin of the snapshot in dir if it is a
// version-3 index (segment files beside it), positioned at its start;
// nil for any other.
func segmentedIndex(dir string) (*os.File, error) {
	f, err := os.Open(filepath.Join(dir, "state.bin"))
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, 12)
	if _, err := io.ReadFull(f, hdr); err != nil || !fsm.IsSegmented(hdr) {
		f.Close()
		return nil, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// indexSize returns the size of the stream openIndex makes of the
// snapshot in dir, whose state.bin is size bytes.
func indexSize(dir string, size int64) (int64, error) {
	f, err := segmentedIndex(dir)
	if err != nil || f == nil {
		return size, err
	}
	defer f.Close()
	return fsm.SplicedSize(f)
}

// checkSegments reads the segment files of the snapshot in dir, if it
// keeps its checkpoint and its index has segments, and checks each
// against its reference (size, CRC32C).
// The error names the file that does not match.
func checkSegments(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, tagFile)); errors.Is(err, os.ErrNotExist) {
		// An older snapshot, its checkpoint and segments dropped: it no
		// longer restores, and Open says so.
		return nil
	}
	f, err := segmentedIndex(dir)
	if err != nil || f == nil {
		return err
	}
	defer f.Close()
	segs := filepath.Join(dir, segmentDir)
	err = fsm.CheckSegments(f, func(name string) (io.ReadCloser, error) {
		if !validSegmentName(name) {
			return nil, fmt.Errorf("segment name %q", name)
		}
		return os.Open(filepath.Join(segs, name))
	})
	var se *fsm.SegmentError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return fmt.Errorf("snapshot segment %s is corrupt or missing: %v", filepath.Join(segs, se.Name), se.Err)
	default:
		return fmt.Errorf("snapshot %s is corrupt: %v", filepath.Join(dir, "state.bin"), err)
	}
}

type readCloser struct {
	io.Reader
	io.Closer
}

type closers []io.Closer

func (cs closers) Close() error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
