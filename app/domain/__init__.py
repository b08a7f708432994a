"""What the product is about, free of storage and web: statuses and their allowed moves."""
