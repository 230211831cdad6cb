// Package tree defines tree blocks: the canonical document of a folder imported as
// one block, listing relative paths, modes, symlink targets and the file blocks.
//
// A tree document is one JSON object followed by a newline:
//
//	{"blockfile.tree":1,"entries":[{"path":"bin","type":"dir","mode":"0755"},
//	 {"path":"bin/java","type":"file","mode":"0755","size":20,"digest":"sha256:..."},
//	 {"path":"lib/modules-link","type":"symlink","mode":"0777","target":"../lib/modules"}]}
//
// (shown wrapped; the real document has no whitespace). Entries are sorted by path in
// byte order; there are no times, owners or the root folder itself, so the same folder
// content anywhere gives the same bytes and the same digest, and a new version of a
// folder shares the blocks of every unchanged file. Build makes a document from a
// directory; Parse reads one and accepts only the canonical form.
package tree
