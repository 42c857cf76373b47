package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestEverySecretHasAFileForm walks the configuration: every field marked
// secret must be settable from its _FILE variable, so no secret ever has
// to sit in the environment or the YAML file.
func TestEverySecretHasAFileForm(t *testing.T) {
	t.Parallel()
	var names []string
	var walk func(tp reflect.Type, prefix string)
	walk = func(tp reflect.Type, prefix string) {
		for i := range tp.NumField() {
			f := tp.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			name := prefix + "_" + strings.ToUpper(tag)
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, name)
				continue
			}
			if f.Tag.Get("secret") == "true" {
				names = append(names, name)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "FHIRSYNC")
	if len(names) < 10 {
		t.Fatalf("found only %d secrets: %v", len(names), names)
	}
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("a=b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		// Validation may reject the value; reading it must not fail.
		_, err := loadConfig("", envFrom(map[string]string{name + "_FILE": file}))
		if err != nil && strings.Contains(err.Error(), name+":") {
			t.Errorf("%s_FILE cannot be used: %v", name, err)
		}
	}
}

func TestCaptureOldKeysFromFile(t *testing.T) {
	t.Parallel()
	key := func(b byte) string { return base64.StdEncoding.EncodeToString([]byte(strings.Repeat(string(b), 32))) }
	dir := t.TempDir()
	file := filepath.Join(dir, "old_keys")
	if err := os.WriteFile(file, []byte("k1="+key('a')+"\nk0="+key('b')+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"FHIRSYNC_LOGS_CAPTURE_ENABLED": "true", "FHIRSYNC_LOGS_CAPTURE_KEY_ID": "k2",
		"FHIRSYNC_LOGS_CAPTURE_KEY": key('c'), "FHIRSYNC_LOGS_CAPTURE_OLD_KEYS_FILE": file}
	cfg, err := loadConfig("", envFrom(env))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"k1": key('a'), "k0": key('b')}; !reflect.DeepEqual(cfg.Logs.Capture.OldKeys, want) {
		t.Errorf("old_keys = %v, want %v", cfg.Logs.Capture.OldKeys, want)
	}

	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("k1 "+key('a')+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env["FHIRSYNC_LOGS_CAPTURE_OLD_KEYS_FILE"] = bad
	_, err = loadConfig("", envFrom(env))
	if err == nil || !strings.Contains(err.Error(), "FHIRSYNC_LOGS_CAPTURE_OLD_KEYS: entries must be written name=value") {
		t.Errorf("a malformed old_keys file: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), key('a')) {
		t.Errorf("the error echoes a key: %v", err)
	}
}
