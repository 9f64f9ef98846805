"""`rillet chat`: the conversation in the terminal (terminal.py) and the server it starts for itself
when none answers (local_server.py). Nothing here imports torch or the engine: the chat talks to a
server over HTTP, its own one included."""
