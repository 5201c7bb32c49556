package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

func testPool(t testing.TB, cidr string) Pool {
	t.Helper()
	p, err := NewPool(netip.MustParsePrefix(cidr))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func openTemp(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ipam.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestPoolReserved(t *testing.T) {
	p := testPool(t, "198.18.0.0/29")
	if got := p.Size(); got != 5 {
		t.Fatalf("size of /29 = %d, want 5 (8 - network - gateway - broadcast)", got)
	}
	for _, a := range []string{"198.18.0.0", "198.18.0.1", "198.18.0.7", "198.18.1.1"} {
		if p.Usable(netip.MustParseAddr(a)) {
			t.Errorf("%s must not be usable", a)
		}
	}
	if !p.Usable(netip.MustParseAddr("198.18.0.2")) {
		t.Errorf(".2 must be usable")
	}
	p6 := testPool(t, "fd00:198:18::/120")
	if p6.Size() != 254 || p6.ID != "node-v6" {
		t.Fatalf("v6 pool: size %d id %s", p6.Size(), p6.ID)
	}
	if _, err := NewPool(netip.MustParsePrefix("198.18.0.0/31")); err == nil {
		t.Fatal("a /31 pool must be refused")
	}
}

func TestAllocateRetrySameIPAndRelease(t *testing.T) {
	s, _ := openTemp(t)
	p := testPool(t, "198.18.0.0/24")
	o := Owner{"c1", "eth0"}
	a1, err := s.Allocate(p, o)
	if err != nil {
		t.Fatal(err)
	}
	if a1.IP != netip.MustParseAddr("198.18.0.2") || a1.Gateway != netip.MustParseAddr("198.18.0.1") {
		t.Fatalf("first allocation %+v", a1)
	}
	a2, err := s.Allocate(p, o)
	if err != nil || a2.IP != a1.IP {
		t.Fatalf("retry got %v %v, want %v", a2.IP, err, a1.IP)
	}
	// Same container, other interface: other address.
	b, err := s.Allocate(p, Owner{"c1", "net1"})
	if err != nil || b.IP == a1.IP {
		t.Fatalf("second interface got %v %v", b.IP, err)
	}
	// Dual stack: a v6 pool gives the same owner a second address.
	p6 := testPool(t, "fd00:198:18::/120")
	c, err := s.Allocate(p6, o)
	if err != nil || !c.IP.Is6() {
		t.Fatalf("v6: %v %v", c.IP, err)
	}
	got, _ := s.Get(o)
	if len(got) != 2 {
		t.Fatalf("owner has %d allocations, want 2", len(got))
	}
	rel, err := s.Release(o)
	if err != nil || len(rel) != 2 {
		t.Fatalf("release: %v %v", rel, err)
	}
	for i := 0; i < 2; i++ {
		rel, err = s.Release(o)
		if err != nil || len(rel) != 0 {
			t.Fatalf("second release must be a no-op: %v %v", rel, err)
		}
	}
	if _, err := s.Release(Owner{"never", "eth0"}); err != nil {
		t.Fatal(err)
	}
	all, _ := s.List()
	if len(all) != 1 || all[0].Owner.IfName != "net1" {
		t.Fatalf("left: %+v", all)
	}
	// Round-robin: the next allocation does not reuse .2 at once.
	d, _ := s.Allocate(p, Owner{"c2", "eth0"})
	if d.IP == a1.IP {
		t.Fatalf("released address reused immediately")
	}
}

func TestExhaustion(t *testing.T) {
	s, _ := openTemp(t)
	p := testPool(t, "198.18.0.0/29")
	seen := map[netip.Addr]bool{}
	for i := 0; i < p.Size(); i++ {
		a, err := s.Allocate(p, Owner{fmt.Sprint("c", i), "eth0"})
		if err != nil {
			t.Fatal(err)
		}
		if seen[a.IP] || !p.Usable(a.IP) {
			t.Fatalf("bad address %s", a.IP)
		}
		seen[a.IP] = true
	}
	_, err := s.Allocate(p, Owner{"one-too-many", "eth0"})
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("want ErrExhausted, got %v", err)
	}
	// Retry of an existing owner still works when the pool is full.
	if _, err := s.Allocate(p, Owner{"c0", "eth0"}); err != nil {
		t.Fatal(err)
	}
	s.Release(Owner{"c3", "eth0"})
	if _, err := s.Allocate(p, Owner{"one-too-many", "eth0"}); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}

func TestGC(t *testing.T) {
	s, _ := openTemp(t)
	p := testPool(t, "198.18.0.0/24")
	for i := 0; i < 10; i++ {
		if _, err := s.Allocate(p, Owner{fmt.Sprint("c", i), "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	keep := map[Owner]bool{{"c1", "eth0"}: true, {"c7", "eth0"}: true}
	rel, err := s.GC(func(o Owner) bool { return keep[o] })
	if err != nil || len(rel) != 8 {
		t.Fatalf("gc released %d (%v), want 8", len(rel), err)
	}
	all, _ := s.List()
	if len(all) != 2 {
		t.Fatalf("left %d", len(all))
	}
}

func TestAllocateIP(t *testing.T) {
	s, _ := openTemp(t)
	p := testPool(t, "198.18.0.0/24")
	want := netip.MustParseAddr("198.18.0.77")
	a, err := s.AllocateIP(p, Owner{"c", "eth0"}, want)
	if err != nil || a.IP != want {
		t.Fatal(a, err)
	}
	if _, err := s.AllocateIP(p, Owner{"d", "eth0"}, want); err == nil {
		t.Fatal("double allocation of a fixed address")
	}
	if _, err := s.AllocateIP(p, Owner{"d", "eth0"}, netip.MustParseAddr("198.18.0.1")); !errors.Is(err, ErrNotInPool) {
		t.Fatalf("gateway: %v", err)
	}
}

func TestParallelGoroutines(t *testing.T) {
	s, _ := openTemp(t)
	p := testPool(t, "198.18.0.0/24")
	const n = 200
	var wg sync.WaitGroup
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a, err := s.Allocate(p, Owner{fmt.Sprint("c", i%100), fmt.Sprint("eth", i/100)})
			ips[i], errs[i] = a.IP, err
		}(i)
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i := range ips {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if seen[ips[i]] {
			t.Fatalf("duplicate %s", ips[i])
		}
		seen[ips[i]] = true
	}
}

// The helper process mode: allocate IPAM_HELPER_N owners, opening the store
// per operation as separate CNI invocations would.
func TestMain(m *testing.M) {
	if path := os.Getenv("IPAM_HELPER_STORE"); path != "" {
		os.Exit(helper(path))
	}
	os.Exit(m.Run())
}

func helper(path string) int {
	p, _ := NewPool(netip.MustParsePrefix(os.Getenv("IPAM_HELPER_POOL")))
	n, _ := strconv.Atoi(os.Getenv("IPAM_HELPER_N"))
	id := os.Getenv("IPAM_HELPER_ID")
	for i := 0; n == 0 || i < n; i++ {
		err := Do(path, 30*time.Second, func(s *Store) error {
			a, err := s.Allocate(p, Owner{fmt.Sprintf("%s-%d", id, i), "eth0"})
			if err == nil {
				fmt.Println(a.IP)
			}
			return err
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

func helperCmd(t *testing.T, path, pool, id string, n int) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "IPAM_HELPER_STORE="+path, "IPAM_HELPER_POOL="+pool,
		"IPAM_HELPER_ID="+id, "IPAM_HELPER_N="+strconv.Itoa(n))
	return cmd
}

func TestParallelProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	const procs, per = 8, 10
	var wg sync.WaitGroup
	outs := make([][]byte, procs)
	errs := make([]error, procs)
	for i := 0; i < procs; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			outs[i], errs[i] = helperCmd(t, path, "198.18.0.0/24", fmt.Sprint("p", i), per).Output()
		}(i)
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("helper %d: %v", i, errs[i])
		}
		for _, l := range splitLines(string(outs[i])) {
			if seen[l] {
				t.Fatalf("duplicate %s across processes", l)
			}
			seen[l] = true
		}
	}
	if len(seen) != procs*per {
		t.Fatalf("%d addresses, want %d", len(seen), procs*per)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	all, _ := s.List()
	if len(all) != procs*per {
		t.Fatalf("store holds %d", len(all))
	}
}

// Kill a process that is allocating in a loop at random points: the store
// must open, be consistent (every owner index points at its allocation and
// the reverse), and every address the process printed must be recorded.
func TestCrashSafety(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	for round := 0; round < 5; round++ {
		cmd := helperCmd(t, path, "198.18.0.0/20", fmt.Sprint("r", round), 0)
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+round*37) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		buf := make([]byte, 1<<20)
		nread := 0
		for {
			k, err := out.Read(buf[nread:])
			nread += k
			if err != nil {
				break
			}
		}
		cmd.Wait()
		printed := splitLines(string(buf[:nread]))
		s, err := OpenWithTimeout(path, 5*time.Second)
		if err != nil {
			t.Fatalf("round %d: reopen after kill: %v", round, err)
		}
		all, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, a := range all {
			have[a.IP.String()] = true
			got, err := s.Get(a.Owner)
			if err != nil || len(got) != 1 || got[0].IP != a.IP {
				t.Fatalf("round %d: owner index for %s inconsistent: %v %v", round, a.Owner, got, err)
			}
		}
		for _, p := range printed {
			if !have[p] {
				t.Fatalf("round %d: committed address %s lost", round, p)
			}
		}
		s.Close()
		t.Logf("round %d: %d allocations survive, %d printed", round, len(all), len(printed))
	}
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
