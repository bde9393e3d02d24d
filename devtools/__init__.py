"""Development and test tools: embedded servers, worker processes, the demo."""
