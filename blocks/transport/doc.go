// Package transport reads images from and writes images to oci:DIR, oci-archive:FILE
// and docker://REF, the transport names skopeo users know.
package transport
