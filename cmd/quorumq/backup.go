package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
)

func init() { rootCmd.AddCommand(backupCmd()) }

// backupCmd streams a consistent snapshot from the leader into a file. The
// file appears only once it is complete and synced (written under a
// temporary name, then renamed), so a failed backup never leaves a file
// that looks usable.
func backupCmd() *cobra.Command {
	var force bool
	cmd := clientVerb(&cobra.Command{
		Use:   "backup FILE",
		Short: "Stream a consistent snapshot of the cluster's state into FILE",
		Long: `Stream a consistent snapshot of the cluster's state into FILE.

The leader takes a Raft snapshot (every write acknowledged before the call is
in it) and streams it; the file is the fsm snapshot format, versioned and
checksummed. Start a new cluster from it with

  quorumq server --restore-from FILE --data-dir EMPTY_DIR ...   (first server)
  quorumq server --join FIRST_SERVER_GOSSIP_ADDR ...            (the others)

Needs a token with the admin scope when the cluster uses tokens.`,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		path := args[0]
		if _, err := os.Stat(path); err == nil && !force {
			return fmt.Errorf("%s exists; pass --force to replace it", path)
		}
		tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name()) // after a successful rename this finds nothing
		info, err := c.Backup(ctx, tmp)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return errors.Join(fmt.Errorf("backup to %s failed; nothing written", path), err)
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			return err
		}
		return report(cmd, f, map[string]any{"file": path, "index": info.Index, "term": info.Term, "bytes": info.Size},
			"backup of log index %d (term %d): %d bytes written to %s\n", info.Index, info.Term, info.Size, path)
	})
	cmd.Flags().BoolVar(&force, "force", false, "replace FILE if it exists")
	return cmd
}
