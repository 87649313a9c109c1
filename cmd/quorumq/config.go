package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/quorumq/quorumq/cluster"
)

// The server reads each setting from, in order of precedence: the command
// line, the environment (QUORUMQ_<FLAG_NAME>), the --config file, the
// flag's default. One name serves all three, so an operator never has to
// learn a second vocabulary: `--data-dir`, `QUORUMQ_DATA_DIR` and
// `data-dir = ...` are the same setting.

// configFlag names the config file flag (QUORUMQ_CONFIG in the environment).
const configFlag = "config"

// flagSources fills fs from the environment, then from the config file,
// for every flag the command line did not set.
func flagSources(fs *pflag.FlagSet) error {
	if err := flagsFromEnv(fs); err != nil {
		return err
	}
	path := fs.Lookup(configFlag).Value.String()
	if path == "" {
		return nil
	}
	return flagsFromFile(fs, path)
}

// flagsFromFile reads a config file: one `name = value` per line, names
// as the flags are spelled without the dashes, `#` starts a comment, a
// value may be quoted with double quotes, list values are comma-separated.
// Settings from the command line or the environment are kept; an unknown
// name, a repeated name or a bad value is an error naming file and line.
func flagsFromFile(fs *pflag.FlagSet, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	defer f.Close()
	seen := map[string]int{}
	sc := bufio.NewScanner(f)
	var errs []error
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		at := fmt.Sprintf("%s:%d", path, line)
		name, value, ok := strings.Cut(text, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %q: want name = value", at, text))
			continue
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if strings.HasPrefix(value, `"`) {
			q, err := strconv.QuotedPrefix(value)
			rest := strings.TrimSpace(value[len(q):])
			if err != nil || (rest != "" && !strings.HasPrefix(rest, "#")) {
				errs = append(errs, fmt.Errorf("%s: %s: unterminated or malformed quoted value", at, name))
				continue
			}
			value, _ = strconv.Unquote(q)
		} else if i := strings.Index(value, " #"); i >= 0 {
			value = strings.TrimSpace(value[:i]) // trailing comment
		}
		fl := fs.Lookup(name)
		if fl == nil || name == configFlag {
			errs = append(errs, fmt.Errorf("%s: unknown setting %q (settings are the flags of `quorumq server --help`, without the dashes)", at, name))
			continue
		}
		if prev, dup := seen[name]; dup {
			errs = append(errs, fmt.Errorf("%s: %s is already set on line %d", at, name, prev))
			continue
		}
		seen[name] = line
		if _, inEnv := os.LookupEnv(envName(name)); fl.Changed || inEnv {
			continue // the command line and the environment win
		}
		if sv, ok := fl.Value.(pflag.SliceValue); ok {
			err = sv.Replace(cleanList(strings.Split(value, ",")))
		} else {
			err = fl.Value.Set(value)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s = %q: %w", at, name, value, err))
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("--config %s: %w", path, err))
	}
	return errors.Join(errs...)
}

// readTokenFile reads an auth tokens file: one `TOKEN SCOPE` per line
// (scope read, write or admin), `#` comments. Errors name file and line
// but never echo a token.
func readTokenFile(path string) ([]cluster.Token, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--auth-tokens-file: %w", err)
	}
	var out []cluster.Token
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("--auth-tokens-file %s:%d: %d fields, want TOKEN SCOPE", path, i+1, len(fields))
		}
		scope, err := cluster.ParseScope(fields[1])
		if err != nil {
			return nil, fmt.Errorf("--auth-tokens-file %s:%d: %w", path, i+1, err)
		}
		out = append(out, cluster.Token{Secret: fields[0], Scope: scope})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--auth-tokens-file %s: no tokens in it", path)
	}
	return out, nil
}

// parseMinFreeDisk sets cfg's free-space threshold from --min-free-disk:
// a percentage of the file system ("5%"), bytes ("2GiB"), "auto" (the
// node's default) or "off".
func parseMinFreeDisk(cfg *cluster.Config, s string) error {
	switch s {
	case "auto":
		return nil
	case "off":
		cfg.MinFreeDisk = -1
		return nil
	}
	if num, ok := strings.CutSuffix(strings.TrimSpace(s), "%"); ok {
		p, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || !(p > 0 && p < 100) {
			return fmt.Errorf("--min-free-disk %q: want a percentage above 0 and below 100, bytes (KiB, MiB, GiB, TiB), auto or off", s)
		}
		cfg.MinFreeDiskPercent = p
		return nil
	}
	v, err := parseBytes("min-free-disk", s)
	if err != nil {
		return fmt.Errorf("%w; or a percentage of the file system such as 5%%, auto or off", err)
	}
	cfg.MinFreeDisk = v
	return nil
}

// parseBytes reads a size: a plain number of bytes or one with a KiB,
// MiB, GiB or TiB suffix ("512MiB").
func parseBytes(flag, s string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}} {
		if v, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v <= 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("--%s %q: want a positive number of bytes, optionally with KiB, MiB, GiB or TiB", flag, s)
	}
	return v * mult, nil
}
