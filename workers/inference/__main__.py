"""`python -m workers.inference`: run the inference server."""

from workers.inference.server import main

if __name__ == "__main__":
    main()
