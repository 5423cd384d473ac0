"""edgert's built-in plugins, each registered through the ``edgert`` entry-point group."""
