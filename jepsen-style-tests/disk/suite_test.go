// Package disk runs the disk part of the jepsen-style suite: power
// failures and corruption on lazyfs mounts and full disks on small file
// systems (jepsen.DiskPart). It is a test binary of its own so that each
// part stays within go test's 10-minute timeout.
package disk

import (
	"os"
	"testing"

	jepsen "github.com/quorumq/quorumq/jepsen-style-tests"
	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

func TestMain(m *testing.M) {
	jepsen.SetReportsDir("../reports")
	code := m.Run()
	harness.RunCleanups()
	os.Exit(code)
}

// TestJepsenDisk runs the disk part of the suite.
func TestJepsenDisk(t *testing.T) { jepsen.RunSuite(t, jepsen.DiskPart) }
