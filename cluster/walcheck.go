package cluster

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// checkSegmentFiles checks that every segment file the wal's meta DB lists
// is there and as long as raft-wal made it. raft-wal preallocates each
// segment to its size limit when it creates it (the segment size the node
// ran with then, recorded per segment in the meta DB: a node restarted
// with another Config.WALSegmentSize keeps its older segments at their
// size), and a sealed segment ends
// with an index block at an offset the meta DB records. Neither shrinks
// afterwards, so a shorter file was cut by something else. raft-wal itself
// would not notice on the tail segment: it recovers the tail by reading
// frames until the first one it cannot read, so a cut tail silently loses
// the entries after the cut, which this node may have acknowledged to its
// leader.
//
// A tail whose last batch fails its checksum is accepted (raft-wal drops
// that batch, as after a write torn by a crash) and reported in torn.
func checkSegmentFiles(dir string, st types.PersistentState) (torn string, err error) {
	for _, seg := range st.Segments {
		path := filepath.Join(dir, segment.FileName(seg))
		fi, err := os.Stat(path)
		if err != nil {
			return "", fmt.Errorf("%w: segment file of log entries from %d: %v", ErrDataDir, seg.MinIndex, err)
		}
		sealed := !seg.SealTime.IsZero()
		size := fi.Size()
		if !sealed && !hasHeader(path) {
			continue // nothing committed yet: removeEmptyTail lets raft-wal create it again
		}
		need, what := int64(seg.SizeLimit), "its preallocated size"
		entries := fmt.Sprintf("log entries from %d", seg.MinIndex)
		if sealed {
			entries = fmt.Sprintf("log entries %d to %d", seg.MinIndex, seg.MaxIndex)
			if seg.IndexStart > 0 {
				if end := int64(seg.IndexStart) + 4*int64(seg.MaxIndex-seg.BaseIndex+1); end > need {
					need, what = end, "its index block"
				}
			}
		}
		if size < need {
			return "", fmt.Errorf("%w: %s is truncated: %d bytes on disk, %s needs %d (%s); replace the node (remove it, wipe its data dir, start it again)",
				ErrDataDir, path, size, what, need, entries)
		}
		bad, err := checkSegmentBatches(path, seg)
		if err != nil {
			return "", err
		}
		if bad != nil {
			torn = bad.Error()
		}
	}
	return torn, nil
}

// hasHeader reports whether the segment file at path has a header, which
// raft-wal writes with the first batch committed to it.
func hasHeader(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	hdr := make([]byte, segFileHeaderLen)
	n, _ := f.ReadAt(hdr, 0)
	for _, b := range hdr[:n] {
		if b != 0 {
			return true
		}
	}
	return false
}

// Segment file layout, as raft-wal v0.4.0 writes it (segment/format.go):
// a 32-byte file header, then 8-byte-aligned frames, each an 8-byte header
// (type, 3 reserved zero bytes, then the payload length, or for a commit
// frame the CRC32-C of every byte since the previous commit frame: the
// file header included for the first) and the payload padded to 8 bytes.
const (
	segFileHeaderLen  = 32
	segFrameHeaderLen = 8
	segFrameEntry     = 1
	segFrameIndex     = 2
	segFrameCommit    = 3
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkSegmentBatches verifies the checksum of every committed batch of one
// segment file. raft-wal reads an entry through its offset and checks no
// checksum, and it checks the last batch of the tail segment only (a
// mismatch there is what a write torn by a crash looks like, and raft-wal
// drops that batch). A flipped bit anywhere else would be read as data:
// in an entry's term or type, or in an entry that is not an fsm command,
// which the read checks (checkedLogStore) cannot see. And raft-wal
// recovers the tail by reading frames up to the first it cannot decode, so
// a flipped frame header would silently end the log there. So: every
// batch but the tail's last must match its commit frame; no intact batch
// may follow a frame that cannot be decoded; and a sealed segment must hold
// every entry its metadata says it does. A tail's last batch that fails
// its checksum is returned in torn.
func checkSegmentBatches(path string, seg types.SegmentInfo) (torn, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v", ErrDataDir, path, err)
	}
	sealed := !seg.SealTime.IsZero()
	if len(data) < segFileHeaderLen {
		if !sealed {
			return nil, nil // the header is written with the first batch
		}
		return nil, fmt.Errorf("%w: %s: the segment header is cut off", ErrDataDir, path)
	}
	var (
		start      = 0                // where the current batch's checksum starts
		off        = segFileHeaderLen // the next frame
		next       = seg.BaseIndex    // index of the next entry frame
		batchFirst = seg.BaseIndex    // first entry of the current batch
		committed  = seg.BaseIndex    // entries below it are in a batch that checked out
		goodEnd    = 0                // end of the last batch that checked out
		bad        error              // the latest batch whose checksum failed
	)
	for {
		typ, val, ok := segFrame(data, off)
		if !ok {
			break
		}
		if typ == segFrameCommit {
			if bad != nil {
				return nil, bad // a later batch was committed after it: not a torn write
			}
			if got := crc32.Checksum(data[start:off], castagnoli); got != val {
				bad = fmt.Errorf("%w: %s: the batch of log entries %d to %d is corrupt: checksum %08x, its commit frame at offset %d says %08x",
					ErrDataDir, path, batchFirst, next-1, got, off, val)
			} else {
				committed, goodEnd = next, off+segFrameHeaderLen
			}
			off += segFrameHeaderLen
			start, batchFirst = off, next
			continue
		}
		end := off + segFrameHeaderLen + int(val) + int((segFrameHeaderLen-val%segFrameHeaderLen)%segFrameHeaderLen)
		if end > len(data) {
			break // a frame cut short by the end of the file
		}
		if typ == segFrameEntry {
			next++
		}
		off = end
	}
	if bad == nil && goodEnd > 0 {
		if at, ok := intactBatchAfter(data, goodEnd); ok {
			return nil, fmt.Errorf("%w: %s: the frames after log entry %d cannot be read, yet a batch committed after them at offset %d is intact (corrupt, not a torn write)",
				ErrDataDir, path, committed-1, at)
		}
	}
	if sealed {
		if bad != nil {
			return nil, bad // sealed segments were complete when sealed: nothing in them was torn
		}
		if committed <= seg.MaxIndex {
			return nil, fmt.Errorf("%w: %s: log entries %d to %d are unreadable (a frame before them is corrupt)", ErrDataDir, path, committed, seg.MaxIndex)
		}
	}
	return bad, nil
}

// segFrame decodes the frame header at off: its type and its length (or,
// for a commit frame, its checksum). ok is false for zeros, the end of the
// file, or bytes that are no frame header.
func segFrame(data []byte, off int) (typ uint8, val uint32, ok bool) {
	if off+segFrameHeaderLen > len(data) {
		return 0, 0, false
	}
	h := data[off : off+segFrameHeaderLen]
	if h[0] < segFrameEntry || h[0] > segFrameCommit || h[1]|h[2]|h[3] != 0 {
		return 0, 0, false
	}
	return h[0], binary.LittleEndian.Uint32(h[4:]), true
}

// intactBatchAfter looks past the point where frames stop decoding for a
// whole batch whose checksum matches: a commit frame on an 8-byte
// boundary after from, then frames up to the next commit frame, whose
// checksum covers them. A write a crash tore leaves at most the pieces of
// batches that were being written, none of them followed by a complete
// later batch; a match by chance is one in 2^32.
func intactBatchAfter(data []byte, from int) (int, bool) {
	for y := from; y+segFrameHeaderLen <= len(data); y += segFrameHeaderLen {
		if typ, _, ok := segFrame(data, y); !ok || typ != segFrameCommit {
			continue
		}
		start := y + segFrameHeaderLen
		off, entries := start, 0
		for {
			typ, val, ok := segFrame(data, off)
			if !ok {
				break
			}
			if typ == segFrameCommit {
				if entries > 0 && crc32.Checksum(data[start:off], castagnoli) == val {
					return start, true
				}
				break
			}
			end := off + segFrameHeaderLen + int(val) + int((segFrameHeaderLen-val%segFrameHeaderLen)%segFrameHeaderLen)
			if end > len(data) {
				break
			}
			if typ == segFrameEntry {
				entries++
			}
			off = end
		}
	}
	return 0, false
}
