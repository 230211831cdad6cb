package serve

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Error codes of the distribution spec
// (https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes).
const (
	codeBlobUnknown      = "BLOB_UNKNOWN"
	codeDigestInvalid    = "DIGEST_INVALID"
	codeManifestUnknown  = "MANIFEST_UNKNOWN"
	codeNameInvalid      = "NAME_INVALID"
	codeNameUnknown      = "NAME_UNKNOWN"
	codeTagInvalid       = "TAG_INVALID"
	codeUnsupported      = "UNSUPPORTED"
	codePaginationNumber = "PAGINATION_NUMBER_INVALID"
	codeUnknown          = "UNKNOWN" // distribution's code for internal errors
	codeRangeInvalid     = "RANGE_INVALID"
)

// apiError is one error of the spec's JSON body, with its HTTP status.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func errf(status int, code, msg string, detail any) *apiError {
	return &apiError{Status: status, Code: code, Message: msg, Detail: detail}
}

// writeError writes the spec's error body:
// {"errors":[{"code":...,"message":...,"detail":...}]}. HEAD responses get
// the status and headers only.
func writeError(w http.ResponseWriter, r *http.Request, e *apiError) {
	body, _ := json.Marshal(struct {
		Errors []*apiError `json:"errors"`
	}{[]*apiError{e}})
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if e.Status == http.StatusMethodNotAllowed {
		h.Set("Allow", "GET, HEAD")
	}
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}
