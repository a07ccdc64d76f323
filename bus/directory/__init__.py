"""The national directory (DESIGN §13): what every party must know about every other, as
one versioned snapshot signed by the directory operator."""
