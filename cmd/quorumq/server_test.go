package main

import (
	"strings"
	"testing"

	"github.com/quorumq/quorumq/cluster"
)

func TestServerFlagsFromEnv(t *testing.T) {
	cmd := serverCmd()
	t.Setenv("QUORUMQ_NODE_ID", "env-node")
	t.Setenv("QUORUMQ_JOIN", "10.0.0.1:7301, 10.0.0.2:7301")
	t.Setenv("QUORUMQ_BOOTSTRAP_EXPECT", "3")
	t.Setenv("QUORUMQ_AUTO_CREATE_QUEUES", "false")
	t.Setenv("QUORUMQ_API_ADDR", "from-env:1")
	if err := cmd.ParseFlags([]string{"--api-addr", "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	if err := flagsFromEnv(cmd.Flags()); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for flag, want := range map[string]string{
		"node-id":            "env-node",
		"join":               "[10.0.0.1:7301,10.0.0.2:7301]",
		"bootstrap-expect":   "3",
		"auto-create-queues": "false",
		"api-addr":           "127.0.0.1:9", // the command line wins
	} {
		if got := get(flag); got != want {
			t.Errorf("--%s = %q, want %q", flag, got, want)
		}
	}

	t.Setenv("QUORUMQ_BOOTSTRAP_EXPECT", "three")
	err := flagsFromEnv(serverCmd().Flags())
	if err == nil || !strings.Contains(err.Error(), "QUORUMQ_BOOTSTRAP_EXPECT") || !strings.Contains(err.Error(), "--bootstrap-expect") {
		t.Fatalf("bad env value: %v, want an error naming the variable and the flag", err)
	}
}

func TestServerSecurityFlags(t *testing.T) {
	var cfg cluster.Config
	f := serverFlags{authToken: "t"}
	if err := f.security(&cfg); err == nil || !strings.Contains(err.Error(), "--auth-token") {
		t.Fatalf("token without TLS: %v", err)
	}
	f = serverFlags{tlsCert: "c.pem"}
	if err := f.security(&cfg); err == nil || !strings.Contains(err.Error(), "--tls-key") {
		t.Fatalf("cert without key: %v", err)
	}
	f = serverFlags{gossipKey: "%%%"}
	if err := f.security(&cfg); err == nil || !strings.Contains(err.Error(), "--gossip-key") {
		t.Fatalf("bad gossip key: %v", err)
	}
}
