package cluster

import (
	"strings"
	"testing"
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
	n.cfg.MinFreeDisk = 1 << 62 // more than any disk has
	code, body := httpGet(t, "http://"+n.AdminAddr()+"/readyz")
	if code != 503 || !strings.Contains(body, "bytes free, less than 4611686018427387904 (--min-free-disk)") {
		t.Fatalf("/readyz below the free-space threshold: %d %q, want 503 naming the threshold", code, body)
	}
}
