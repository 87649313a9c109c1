package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// /readyz is 503 while the data dir's file system has less free space than
// MinFreeDisk, and says so.
func TestReadyzIsUnavailableWhileTheDiskIsLow(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.AdminAddr = "127.0.0.1:0" })
	c.WaitReplicated(t)
	n := c.Nodes[0]
	if code, body := httpGet(t, "http://"+n.AdminAddr()+"/readyz"); code != 200 {
		t.Fatalf("/readyz with room on disk: %d %s", code, body)
	}
	n.disk.set(1<<62, 0) // more than any disk has
	code, body := httpGet(t, "http://"+n.AdminAddr()+"/readyz")
	if code != 503 || !strings.Contains(body, "bytes free, less than 4611686018427387904 (--min-free-disk)") {
		t.Fatalf("/readyz below the free-space threshold: %d %q, want 503 naming the threshold", code, body)
	}
}

// A follower whose appends fail (its disk is full) still hears the leader's
// heartbeats and knows the leader, but falls behind: /readyz says so, and
// is 200 again once it has caught up.
func TestReadyzIsUnavailableWhileAFollowerLags(t *testing.T) {
	c, disks := fullDiskCluster(t, func(_ int, cfg *Config) {
		cfg.AdminAddr = "127.0.0.1:0"
		cfg.ReadyMaxLag = 20
	})
	leader := c.Leader(t)
	li := c.Index(leader)
	fi := (li + 1) % 3
	readyz := func() (int, string) { return httpGet(t, "http://"+c.Nodes[fi].AdminAddr()+"/readyz") }
	c.WaitReplicated(t)
	if code, body := readyz(); code != 200 {
		t.Fatalf("/readyz of a follower in step: %d %s", code, body)
	}
	disks[fi].full.Store(true)
	for i := range 50 {
		enqueue(t, c, li, "q", fmt.Sprintf("m%d", i))
	}
	code, body := readyz()
	if code != 503 || !strings.Contains(body, "lags the leader's commit index") || !strings.Contains(body, "more than 20") {
		t.Fatalf("/readyz of a follower 50 entries behind: %d %q, want 503 naming the lag", code, body)
	}
	disks[fi].full.Store(false)
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body = readyz()
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz 20 s after the follower's disk was freed: %d %q", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
