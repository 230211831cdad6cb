// Package bundle makes, inspects and applies offline update bundles: single files
// holding only the blobs a target lacks, and inventories of what a target holds.
package bundle
