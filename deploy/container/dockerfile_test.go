package container

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction with its continuation lines
// joined and comments dropped.
type instruction struct {
	cmd  string // upper case: FROM, RUN, COPY…
	args string
	line int
}

func parseDockerfile(t *testing.T, path string) []instruction {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{cmd: strings.ToUpper(cmd), args: strings.Join(strings.Fields(args), " "), line: start})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("%s: the last instruction ends in a line continuation", path)
	}
	return out
}

// stages splits instructions at each FROM; global ARGs come before the first.
func stages(ins []instruction) (global []instruction, st [][]instruction) {
	for _, in := range ins {
		if in.cmd == "FROM" {
			st = append(st, []instruction{in})
			continue
		}
		if len(st) == 0 {
			global = append(global, in)
			continue
		}
		st[len(st)-1] = append(st[len(st)-1], in)
	}
	return global, st
}

var digestRef = regexp.MustCompile(`^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$`)

// TestDockerfile checks what a build here cannot: both bases pinned by tag
// and digest, a non-root numeric user, a health check run by the binary
// itself (the image has no shell or curl), the data directory a volume, and
// no secret baked into the image.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	ins := parseDockerfile(t, "../../Dockerfile")
	global, st := stages(ins)
	args := map[string]string{}
	for _, in := range global {
		if in.cmd != "ARG" {
			t.Errorf("line %d: only ARG may come before the first FROM, found %s", in.line, in.cmd)
			continue
		}
		name, val, _ := strings.Cut(in.args, "=")
		args[name] = val
	}
	if len(st) < 2 {
		t.Fatalf("want a multi-stage build, found %d stage(s)", len(st))
	}
	stageNames := map[string]bool{}
	for _, s := range st {
		fields := strings.Fields(s[0].args)
		ref := os.Expand(fields[0], func(k string) string { return args[k] })
		if !digestRef.MatchString(ref) && ref != "scratch" {
			t.Errorf("line %d: FROM %s resolves to %q, which is not IMAGE:TAG@sha256:DIGEST", s[0].line, fields[0], ref)
		}
		if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
			stageNames[fields[2]] = true
		}
	}

	final := st[len(st)-1]
	last := func(cmd string) (instruction, bool) {
		for i := len(final) - 1; i >= 0; i-- {
			if final[i].cmd == cmd {
				return final[i], true
			}
		}
		return instruction{}, false
	}
	if u, ok := last("USER"); !ok {
		t.Error("the final stage sets no USER: the image would run as root")
	} else if !regexp.MustCompile(`^[1-9][0-9]*(:[0-9]+)?$`).MatchString(u.args) {
		// Kubernetes' runAsNonRoot can only verify a numeric user.
		t.Errorf("USER %s: want a numeric non-root uid (65532:65532)", u.args)
	}
	if hc, ok := last("HEALTHCHECK"); !ok {
		t.Error("the final stage has no HEALTHCHECK")
	} else if !strings.Contains(hc.args, `CMD ["/usr/local/bin/fhirsync", "healthcheck"`) {
		t.Errorf("HEALTHCHECK %s: want the exec form running /usr/local/bin/fhirsync healthcheck (no shell in the image)", hc.args)
	}
	if ep, ok := last("ENTRYPOINT"); !ok || ep.args != `["/usr/local/bin/fhirsync"]` {
		t.Errorf("ENTRYPOINT = %q, want the exec form [\"/usr/local/bin/fhirsync\"]", ep.args)
	}
	env := map[string]string{}
	for _, in := range final {
		if in.cmd != "ENV" {
			continue
		}
		for _, kv := range strings.Fields(in.args) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	dataDir := env["FHIRSYNC_DATA_DIR"]
	if dataDir == "" {
		t.Error("the final stage does not set FHIRSYNC_DATA_DIR")
	}
	if v, ok := last("VOLUME"); !ok || v.args != `["`+dataDir+`"]` {
		t.Errorf("VOLUME = %q, want the data directory %q (the root filesystem stays read-only)", v.args, dataDir)
	}
	if w, ok := last("WORKDIR"); !ok || w.args != dataDir {
		t.Errorf("WORKDIR = %q, want the data directory %q", w.args, dataDir)
	}
	if !strings.HasSuffix(env["FHIRSYNC_LISTEN"], ":8080") {
		t.Errorf("FHIRSYNC_LISTEN = %q, want a port the HEALTHCHECK's default URL matches (8080)", env["FHIRSYNC_LISTEN"])
	}

	secretName := regexp.MustCompile(`(?i)(secret|password|passwd|token|api_?key|private_?key|connection_?string)`)
	for _, in := range ins {
		switch in.cmd {
		case "ENV", "ARG":
			for _, kv := range strings.Fields(in.args) {
				k, _, _ := strings.Cut(kv, "=")
				if secretName.MatchString(k) && !strings.HasSuffix(k, "_FILE") {
					t.Errorf("line %d: %s %s looks like a secret; secrets come from files or the environment at run time", in.line, in.cmd, k)
				}
			}
		case "ADD":
			t.Errorf("line %d: ADD fetches or unpacks; use COPY", in.line)
		case "COPY":
			if regexp.MustCompile(`(?i)(\.env\b|\.pem\b|\.key\b|id_rsa|credentials)`).MatchString(in.args) {
				t.Errorf("line %d: COPY %s copies what looks like a secret", in.line, in.args)
			}
			if m := regexp.MustCompile(`--from=(\S+)`).FindStringSubmatch(in.args); m != nil && !stageNames[m[1]] {
				t.Errorf("line %d: COPY --from=%s names no stage of this file (it would pull an image)", in.line, m[1])
			}
		}
	}

	ignore, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatalf("no .dockerignore: the build context would carry .git and local data: %v", err)
	}
	for _, want := range []string{".git", "data/", "*.db", "admin-one-time-password", "node_modules/", "cmd/fhirsync/fhirsync"} {
		if !strings.Contains(string(ignore), want) {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
}

// TestDockerfileMatchesScratchBuild keeps the image CI builds from scratch
// the same as the published one from the binary onwards: only the base (and
// the build stage behind /out) differs.
func TestDockerfileMatchesScratchBuild(t *testing.T) {
	t.Parallel()
	runtime := func(path string) []instruction {
		ins := parseDockerfile(t, path)
		for i, in := range ins {
			if in.cmd == "COPY" && strings.HasPrefix(in.args, "--from=build /out/fhirsync ") {
				out := ins[i:]
				for j := range out {
					out[j].line = 0
				}
				return out
			}
		}
		t.Fatalf("%s: no COPY --from=build /out/fhirsync", path)
		return nil
	}
	published, scratch := runtime("../../Dockerfile"), runtime("Containerfile.scratch")
	if len(published) != len(scratch) {
		t.Fatalf("runtime stages differ: the Dockerfile has %d instructions after the binary, Containerfile.scratch %d", len(published), len(scratch))
	}
	for i := range published {
		if published[i] != scratch[i] {
			t.Errorf("runtime instruction %d differs:\n Dockerfile:            %s %s\n Containerfile.scratch: %s %s",
				i, published[i].cmd, published[i].args, scratch[i].cmd, scratch[i].args)
		}
	}
	// Both build the binary with the same script.
	build := parseDockerfile(t, "../../Dockerfile")
	found := false
	for _, in := range build {
		if in.cmd == "RUN" && strings.Contains(in.args, "deploy/container/build-binary.sh /out/fhirsync") {
			found = true
		}
	}
	if !found {
		t.Error("the Dockerfile's build stage does not run deploy/container/build-binary.sh /out/fhirsync")
	}
	script, err := os.ReadFile("build-offline.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(script), `"$here/build-binary.sh" "$ctx/out/fhirsync"`) {
		t.Error("build-offline.sh does not build the binary with build-binary.sh")
	}
	for _, f := range []string{"build-binary.sh", "build-offline.sh"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", f)
		}
	}
}
