package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultDocHeader starts a results document that does not exist yet.
const DefaultDocHeader = "# Performance\n\nFigures written by `sigil-bench`. Each section is replaced as a whole by the\nbenchmark that owns it; edit outside the `bench:` markers only.\n"

// SectionMarkers returns the start and end marker comments of the section
// named name, e.g. "<!-- bench:datapath:start -->".
func SectionMarkers(name string) (start, end string) {
	return "<!-- bench:" + name + ":start -->", "<!-- bench:" + name + ":end -->"
}

// ReplaceSection returns doc with the text between the markers of section
// name replaced by body. A document without the section gets it appended; a
// document with unbalanced markers is an error, so nothing is ever written
// over text a person added.
func ReplaceSection(doc, name, body string) (string, error) {
	start, end := SectionMarkers(name)
	body = strings.TrimRight(body, "\n") + "\n"
	block := start + "\n" + body + end
	i := strings.Index(doc, start)
	j := strings.Index(doc, end)
	switch {
	case i < 0 && j < 0:
		sep := ""
		switch {
		case doc == "":
		case strings.HasSuffix(doc, "\n\n"):
		case strings.HasSuffix(doc, "\n"):
			sep = "\n"
		default:
			sep = "\n\n"
		}
		return doc + sep + block + "\n", nil
	case i < 0 || j < 0 || j < i:
		return "", fmt.Errorf("section %q: markers missing or out of order", name)
	}
	if strings.Count(doc, start) != 1 || strings.Count(doc, end) != 1 {
		return "", fmt.Errorf("section %q: markers appear more than once", name)
	}
	return doc[:i] + block + doc[j+len(end):], nil
}

// WriteSection replaces section name of the markdown file at path with body
// (see ReplaceSection), creating the file with DefaultDocHeader if it is
// missing. The file is replaced atomically.
func WriteSection(path, name, body string) error {
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		old = []byte(DefaultDocHeader)
	case err != nil:
		return err
	}
	doc, err := ReplaceSection(string(old), name, body)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal([]byte(doc), old) {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(doc); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	mode := fs.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	if err := os.Chmod(tmp.Name(), mode); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
