package deflate

// From compress/flate's inflate.go, which this package does not copy.
const (
	maxCodeLen = 16 // max length of Huffman code
	maxNumLit  = 286
)

// An InternalError reports an error in the flate code itself.
type InternalError string

func (e InternalError) Error() string { return "flate: internal error: " + string(e) }
