package bundle

import (
	"context"
	"reflect"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestWalkClosureSkipsHydratedLayers(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	putSynth(t, s, "app:v1", synthV1)
	cs, err := Closures(ctx, s, []string{"app:v1"})
	if err != nil {
		t.Fatal(err)
	}
	c := cs[0]
	// The two layers with blocks are hydrated at the target; the system
	// layer has none, so it is its own blocked form and travels as is.
	if len(c.Hydrated) != 2 {
		t.Fatalf("hydrated layers: %d, want 2", len(c.Hydrated))
	}
	kinds := map[Kind]int{}
	for _, b := range c.Blobs {
		kinds[b.Kind]++
		for _, h := range c.Hydrated {
			if b.Digest == h.Digest {
				t.Errorf("hydrated standard layer %s is in the closure", h.Digest)
			}
		}
	}
	want := map[Kind]int{
		KindIndex: 1, KindManifest: 1, KindBlockedManifest: 1, KindBlockSet: 2,
		KindConfig: 2, // image config, empty config of the block-sets
		KindLayer:  1, KindBlockedLayer: 2, KindBlock: 4,
	}
	if !reflect.DeepEqual(kinds, want) {
		t.Errorf("closure kinds %v, want %v", kinds, want)
	}
	if got := c.Platforms; !reflect.DeepEqual(got, []string{"linux/amd64"}) {
		t.Errorf("platforms %v", got)
	}
}

func TestPlanSharedBlocksCostOnce(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	putSynth(t, s, "team-a:v1", synthV1)
	putSynth(t, s, "team-b:v1", synthOther)
	cs, err := Closures(ctx, s, []string{"team-a:v1", "team-b:v1"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := MakePlan(cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[digest.Digest]bool{}
	members := 0
	for _, b := range p.Ship {
		if seen[b.Digest] {
			t.Errorf("blob %s shipped twice", b)
		}
		seen[b.Digest] = true
		if b.Kind == KindBlock {
			members++
		}
	}
	// guava, netty, jackson, app v1 from team a; only netty v3 is new in team b.
	if members != 5 {
		t.Errorf("%d block members shipped, want 5 (guava and jackson once for both images)", members)
	}
	if len(p.Requires) != 0 {
		t.Errorf("a full bundle requires %v", p.Requires)
	}
	// Metadata comes before layer data, block members last.
	for i := 1; i < len(p.Ship); i++ {
		if p.Ship[i-1].Kind.rank() > p.Ship[i].Kind.rank() {
			t.Fatalf("ship order: %s before %s", p.Ship[i-1].Kind, p.Ship[i].Kind)
		}
	}
}

func TestPlanRequiresIsExact(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	putSynth(t, s, "app:v1", synthV1)
	putSynth(t, s, "app:v2", synthV2)
	v1, _ := Closures(ctx, s, []string{"app:v1"})
	v2, _ := Closures(ctx, s, []string{"app:v2"})
	p, err := MakePlan(v2, BaseOf(v1...))
	if err != nil {
		t.Fatal(err)
	}
	in1 := BaseOf(v1...)
	var wantReq, wantShip []Blob
	for _, b := range v2[0].Blobs {
		if in1.Has(b.Digest) {
			wantReq = append(wantReq, b)
		} else {
			wantShip = append(wantShip, b)
		}
	}
	if !reflect.DeepEqual(digestsOf(p.Requires), digestsOf(wantReq)) {
		t.Errorf("requires %v, want %v", digestsOf(p.Requires), digestsOf(wantReq))
	}
	if !reflect.DeepEqual(digestsOf(p.Ship), digestsOf(wantShip)) {
		t.Errorf("ship %v, want %v", digestsOf(p.Ship), digestsOf(wantShip))
	}
	// What changed: netty v2 and app v2 members, their blocked layers and
	// block-sets, the blocked and standard manifests, the config and the index.
	kinds := map[Kind]int{}
	for _, b := range p.Ship {
		kinds[b.Kind]++
	}
	want := map[Kind]int{KindIndex: 1, KindManifest: 1, KindBlockedManifest: 1, KindBlockSet: 2, KindConfig: 1, KindBlockedLayer: 2, KindBlock: 2}
	if !reflect.DeepEqual(kinds, want) {
		t.Errorf("shipped kinds %v, want %v", kinds, want)
	}
	// The unchanged system layer, guava, jackson and the empty config are required.
	reqKinds := map[Kind]int{}
	for _, b := range p.Requires {
		reqKinds[b.Kind]++
	}
	if want := (map[Kind]int{KindLayer: 1, KindBlock: 2, KindConfig: 1}); !reflect.DeepEqual(reqKinds, want) {
		t.Errorf("required kinds %v, want %v", reqKinds, want)
	}
}

func TestPlanFromAndHaveAgree(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	putSynth(t, src, "app:v1", synthV1)
	putSynth(t, src, "app:v2", synthV2)
	// The site holds v1 as apply leaves it: closure plus hydrated layers.
	site := openStore(t)
	copyClosure(t, src, site, "app:v1")
	var ds []digest.Digest
	if err := site.Walk(ctx, func(d digest.Digest, _ int64) error { ds = append(ds, d); return nil }); err != nil {
		t.Fatal(err)
	}
	inv, err := NewInventory(ds, DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	v1, _ := Closures(ctx, src, []string{"app:v1"})
	v2, _ := Closures(ctx, src, []string{"app:v2"})
	fromPlan, err := MakePlan(v2, BaseOf(v1...))
	if err != nil {
		t.Fatal(err)
	}
	havePlan, err := MakePlan(v2, inv)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromPlan, havePlan) {
		t.Errorf("--from plan and --have plan differ:\nfrom %+v\nhave %+v", fromPlan, havePlan)
	}
}

func TestPlanRefusesDuplicateImage(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	putSynth(t, s, "app:v1", synthV1)
	cs, _ := Closures(ctx, s, []string{"app:v1", "app:v1"})
	if _, err := MakePlan(cs, nil); err == nil {
		t.Fatal("the same image twice was accepted")
	}
}

func TestOutputFor(t *testing.T) {
	for in, want := range map[string]string{
		"oci-archive:/out/{name}.tar":    "oci-archive:/out/example.test_app_1.tar",
		"oci:/out/layout:{name}":         "oci:/out/layout:example.test/app:1",
		"oci:/out/{name}":                "oci:/out/example.test_app_1",
		"docker://127.0.0.1:5000/{name}": "docker://127.0.0.1:5000/example.test/app:1",
		"oci-archive:/out/one.tar":       "oci-archive:/out/one.tar",
	} {
		if got, err := OutputFor(in, "example.test/app:1"); err != nil || got != want {
			t.Errorf("OutputFor(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
}
