// Command quorumq is the one binary of quorumq: the server (`quorumq
// server`), a three-node development cluster (`quorumq dev`), the CLI verbs
// that talk to a cluster through the Go client, and the benchmark.
//
// Each verb lives in its own file and adds itself to rootCmd in an init
// function.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "quorumq",
	Short:         "quorumq: a Raft-replicated work queue",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "quorumq:", err)
		os.Exit(1)
	}
}
