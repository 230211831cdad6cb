package bundle

import (
	"context"
	"fmt"
	"strings"
)

// hydrate rebuilds the standard image of im in s and writes it to each output.
// TODO: image.Materialize / image.Hydrate once blocks/image lands.
func hydrate(ctx context.Context, s interface{}, im Image, opts ApplyOptions) ([]string, error) {
	var outs []string
	for _, o := range opts.Outputs {
		outs = append(outs, strings.ReplaceAll(o, "{name}", im.Name))
	}
	if len(outs) > 0 {
		return nil, fmt.Errorf("outputs are not supported yet")
	}
	return outs, nil
}
