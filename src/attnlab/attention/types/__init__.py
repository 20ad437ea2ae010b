"""One file per attention type; ``attnlab.attention.registry`` lists them."""
