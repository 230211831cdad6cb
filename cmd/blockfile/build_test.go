package main

import (
	"reflect"
	"testing"

	bkclient "github.com/moby/buildkit/client"
)

func TestParseCacheEntries(t *testing.T) {
	got, err := parseCacheEntries("--cache-to", []string{
		"type=registry,ref=reg.example/app:cache,mode=max",
		"reg.example/app:cache2",
		"type=local,dest=/tmp/c",
		"type=inline",
		`type=registry,ref=r/a:c,"oci-mediatypes=true"`,
	}, true)
	want := []bkclient.CacheOptionsEntry{
		{Type: "registry", Attrs: map[string]string{"ref": "reg.example/app:cache", "mode": "max"}},
		{Type: "registry", Attrs: map[string]string{"ref": "reg.example/app:cache2"}},
		{Type: "local", Attrs: map[string]string{"dest": "/tmp/c"}},
		{Type: "inline", Attrs: map[string]string{}},
		{Type: "registry", Attrs: map[string]string{"ref": "r/a:c", "oci-mediatypes": "true"}},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v\nwant %v", got, err, want)
	}
	for _, bad := range []string{"type=registry", "type=local,src=/x", "ref=x", "a,b", "type=registry,ref=x,extra", `"unterminated`} {
		if _, err := parseCacheEntries("--cache-to", []string{bad}, true); exitCode(err) != exitUsage {
			t.Errorf("%q: %v, want a usage error", bad, err)
		}
	}
	if _, err := parseCacheEntries("--cache-from", []string{"type=local,src=/x"}, false); err != nil {
		t.Errorf("cache-from local src: %v", err)
	}
}

func TestSecretAndSSHFlags(t *testing.T) {
	t.Setenv("BLOCKFILE_TEST_TOKEN", "x")
	if a, err := secretsAttachable([]string{"id=a,src=build_test.go", "type=env,id=b,env=BLOCKFILE_TEST_TOKEN", "id=BLOCKFILE_TEST_TOKEN"}); err != nil || a == nil {
		t.Errorf("valid secrets: %v", err)
	}
	for _, bad := range []string{"src=x", "id=a,type=nope", "justaword"} {
		if _, err := secretsAttachable([]string{bad}); exitCode(err) != exitUsage {
			t.Errorf("--secret %q: %v, want a usage error", bad, err)
		}
	}
	if _, err := secretsAttachable([]string{"id=a,src=/nonexistent/file"}); err == nil || exitCode(err) != exitFailed {
		t.Errorf("missing secret file: %v, want a failure", err)
	}
	if _, err := sshAttachable([]string{"=x"}); exitCode(err) != exitUsage {
		t.Errorf("--ssh =x: %v", err)
	}
	if a, err := sshAttachable(nil); a != nil || err != nil {
		t.Errorf("no --ssh: %v %v", a, err)
	}
}

func TestCheckDestination(t *testing.T) {
	for _, ok := range []string{"oci:/x", "oci-archive:/x.tar", "docker://r/a:b"} {
		if err := checkDestination(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"ftp://x", "oci:", "docker-archive:/x", "x.tar"} {
		if err := checkDestination(bad); exitCode(err) != exitUsage {
			t.Errorf("%s: %v", bad, err)
		}
	}
}
