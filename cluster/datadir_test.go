package cluster

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// boltFile writes a raft-boltdb store with some log entries into dir and
// returns its path.
func boltFile(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, raftDBFile)
	s, err := raftboltdb.NewBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := uint64(1); i <= 2000; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Data: make([]byte, 200)})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckBoltFile(t *testing.T) {
	path := boltFile(t, t.TempDir())
	if err := checkBoltFile(path); err != nil {
		t.Fatalf("intact file: %v", err)
	}
	if err := checkBoltFile(filepath.Join(t.TempDir(), raftDBFile)); err != nil {
		t.Fatalf("missing file (first start): %v", err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		damage func([]byte) []byte
		want   string
	}{
		{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }, "truncated"},
		{"truncated after the first meta page", func(b []byte) []byte { return b[:100] }, "truncated"},
		{"truncated inside the first meta page", func(b []byte) []byte { return b[:40] }, "not a valid bolt database"},
		{"empty", func(b []byte) []byte { return nil }, "empty"},
		{"both meta pages garbled", func(b []byte) []byte {
			c := append([]byte(nil), b...)
			for i := 16; i < 16+64; i++ {
				c[i] ^= 0xff
				c[4096+i] ^= 0xff
			}
			return c
		}, "not a valid bolt database"},
		{"not bolt at all", func(b []byte) []byte { return []byte(strings.Repeat("hello world\n", 1000)) }, "not a valid bolt database"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), raftDBFile)
			if err := os.WriteFile(p, tc.damage(orig), 0o600); err != nil {
				t.Fatal(err)
			}
			err := checkBoltFile(p)
			if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want ErrDataDir naming %s, saying %q", err, p, tc.want)
			}
		})
	}

	// One garbled meta page is survivable: bbolt uses the other one.
	p := filepath.Join(t.TempDir(), raftDBFile)
	c := append([]byte(nil), orig...)
	c[20] ^= 0xff
	if err := os.WriteFile(p, c, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkBoltFile(p); err != nil {
		t.Fatalf("one good meta page left: %v", err)
	}
}

func TestPrepareDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	fresh, err := prepareDataDir(dir, "n1")
	if err != nil || !fresh {
		t.Fatalf("new dir: fresh=%v err=%v", fresh, err)
	}
	if err := writeIdentity(dir, "n1"); err != nil {
		t.Fatal(err)
	}
	if fresh, err := prepareDataDir(dir, "n1"); err != nil || fresh {
		t.Fatalf("own dir: fresh=%v err=%v", fresh, err)
	}
	_, err = prepareDataDir(dir, "n2")
	if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), `"n1"`) || !strings.Contains(err.Error(), filepath.Join(dir, identityFile)) {
		t.Fatalf("foreign dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, identityFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := prepareDataDir(dir, "n1"); !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt identity: %v", err)
	}

	// A raft.db without an identity file was not made by quorumq.
	other := t.TempDir()
	boltFile(t, other)
	if _, err := prepareDataDir(other, "n1"); !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), identityFile) {
		t.Fatalf("raft.db without node.json: %v", err)
	}
}
