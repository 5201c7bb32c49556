package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplaceSection(t *testing.T) {
	s, e := SectionMarkers("x")
	for _, tc := range []struct {
		name, doc, want string
		err             bool
	}{
		{"empty doc", "", s + "\nA\n" + e + "\n", false},
		{"append after text", "# T\n", "# T\n\n" + s + "\nA\n" + e + "\n", false},
		{"append no newline", "# T", "# T\n\n" + s + "\nA\n" + e + "\n", false},
		{"replace keeps surroundings", "pre\n" + s + "\nold\nold\n" + e + "\npost\n", "pre\n" + s + "\nA\n" + e + "\npost\n", false},
		{"other sections untouched", "<!-- bench:y:start -->\nY\n<!-- bench:y:end -->\n" + s + "\nold\n" + e + "\n",
			"<!-- bench:y:start -->\nY\n<!-- bench:y:end -->\n" + s + "\nA\n" + e + "\n", false},
		{"end before start", e + "\n" + s + "\n", "", true},
		{"start only", s + "\n", "", true},
		{"twice", s + e + s + e, "", true},
	} {
		got, err := ReplaceSection(tc.doc, "x", "A\n\n")
		if (err != nil) != tc.err {
			t.Errorf("%s: err %v", tc.name, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

func TestWriteSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "docs", "performance.md")
	if err := WriteSection(path, "a", "## A\n1"); err != nil {
		t.Fatal(err)
	}
	if err := WriteSection(path, "b", "## B\n2"); err != nil {
		t.Fatal(err)
	}
	if err := WriteSection(path, "a", "## A\n3"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if !strings.HasPrefix(doc, DefaultDocHeader) || !strings.Contains(doc, "## A\n3\n") ||
		!strings.Contains(doc, "## B\n2\n") || strings.Contains(doc, "## A\n1") ||
		strings.Index(doc, "## A") > strings.Index(doc, "## B") {
		t.Errorf("document:\n%s", doc)
	}
}
