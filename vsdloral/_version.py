"""vsdloral's version, in a leaf module: modules below the package (the graph cache's key) read it
without importing the package, whose lazy attributes lead back to them."""

__version__ = "0.1.0"
