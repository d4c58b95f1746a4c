//go:build linux

package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// The baseline target: the mcp_proxy site, with the same Caddyfile block
// and global options as the mcp_proxy target, served by a second Caddy
// process started from another binary (-baseline; typically ./cmd/caddy
// built at an older commit), in front of the same mock upstream. Both
// processes run side by side, so one run compares two builds under the
// same machine noise.

// checkBinary returns the absolute path of an executable file.
func checkBinary(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable file", abs)
	}
	return abs, nil
}

// binaryDesc names a prebuilt binary in a report: its path and the start
// of its SHA-256, so two reports can tell whether they ran the same one.
func binaryDesc(path string) string {
	sum, err := fileSHA256(path)
	if err != nil {
		return "prebuilt binary " + path
	}
	return fmt.Sprintf("prebuilt binary %s (sha256 %s…)", path, sum[:12])
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// baselineParams is the baseline process's Caddyfile: the mcp_proxy site
// alone on port, with the mcp_proxy target's block and the global options,
// and an admin endpoint of its own.
func baselineParams(o *options, upstream string, port int, admin string) caddyfileParams {
	return caddyfileParams{Upstream: upstream, MCPPort: port, MCPBlock: o.mcpBlock, Global: o.global, AdminAddr: admin}
}

// startBaseline starts the baseline's Caddy process from the -baseline
// binary, in a directory of its own under tmp, and records it in env. It
// returns the process's Caddyfile and the site's port.
func startBaseline(ctx context.Context, env *benchEnv, o *options, upstream, tmp string, logf func(string, ...any)) (string, int, error) {
	if o.baselineBin == "" {
		return "", 0, errors.New("no -baseline binary")
	}
	logf("starting the baseline caddy from %s ...", o.baselineBin)
	sc, err := startSoloCaddy(ctx, o.baselineBin, filepath.Join(tmp, targetBase),
		func(port int, admin string) caddyfileParams { return baselineParams(o, upstream, port, admin) })
	if err != nil {
		return "", 0, fmt.Errorf("baseline: %w", err)
	}
	env.base, env.baseAdmin = sc.proc, sc.admin
	return sc.cf, sc.port, nil
}

// baseSetup is the report's setup line for the baseline target.
func baseSetup(o *options) string {
	return fmt.Sprintf("baseline: the mcp_proxy site with the mcp_proxy target's block and global options (the second Caddyfile below), served by a second Caddy process started from the -baseline binary %s, with an admin endpoint of its own, in front of the same mock upstream; its Caddy CPU and RSS are that process's; mcp_proxy / baseline ratios compare the two builds", o.baselineBin)
}
