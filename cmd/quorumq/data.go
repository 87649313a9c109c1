package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/cluster"
)

func init() { rootCmd.AddCommand(dataCmd()) }

// dataCmd groups the offline verbs that work on a stopped server's data
// dir.
func dataCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data",
		Short: "Work on a stopped server's data dir",
	}
	cmd.AddCommand(migrateLogCmd())
	return cmd
}

// migrateLogCmd converts a data dir's Raft log from raft-boltdb to
// raft-wal (cluster.MigrateLogStore).
func migrateLogCmd() *cobra.Command {
	var dataDir, logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "migrate-log",
		Short: "Convert a stopped server's Raft log from raft-boltdb (raft.db) to raft-wal",
		Long: `Convert a stopped server's Raft log from raft-boltdb (raft.db) to raft-wal.

Stop the server first (a running server holds the store's lock, and the
command refuses). The log is checked as the server checks it at start, then
copied into DATA_DIR/wal.migrating, read back and compared, renamed to
DATA_DIR/wal, and only then is raft.db removed. A conversion stopped at any
point leaves a data dir the server starts on: on raft.db if the wal was not
complete, on the wal otherwise. Start the server again with its usual flags.
A data dir already on the wal is left as it is.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return errors.New("--data-dir is required: the data dir of the stopped server to convert")
			}
			logger, err := newSlogLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			privateFiles()
			m, err := cluster.MigrateLogStore(cmd.Context(), dataDir, logger)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case !m.Converted:
				fmt.Fprintf(out, "%s already uses the wal log store; nothing to do\n", dataDir)
			case m.Last == 0:
				fmt.Fprintf(out, "%s converted to the wal log store (the log was empty)\n", dataDir)
			default:
				fmt.Fprintf(out, "%s converted to the wal log store: log entries %d to %d copied", dataDir, m.First, m.Last)
				if m.Skipped > 0 {
					fmt.Fprintf(out, " (%d entries before a snapshot install's gap left out: the snapshot covers them)", m.Skipped)
				}
				fmt.Fprintln(out)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dataDir, "data-dir", "", "data dir of the stopped server (required)")
	fl.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}
