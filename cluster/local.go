package cluster

import (
	"log/slog"
	"path/filepath"
	"strconv"
)

// LocalConfig is the Config of node i (from 0) of an n-node cluster that
// runs in one process on loopback, as `quorumq dev` and the tests
// (StartTestCluster) start one: ID n<i+1>, data in dir/n<i+1>, all n
// bootstrapping together, queues created on first use and gossip timed
// for loopback. The caller sets the addresses and Join.
func LocalConfig(dir string, i, n int, logger *slog.Logger) Config {
	id := "n" + strconv.Itoa(i+1)
	return Config{
		NodeID:           id,
		DataDir:          filepath.Join(dir, id),
		BootstrapExpect:  n,
		AutoCreateQueues: true,
		LocalGossip:      true,
		Logger:           logger,
	}
}
