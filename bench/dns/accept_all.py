#!/usr/bin/env python3
"""The service behind every n{i}.example.test of the DNS bench: accepts TCP connections on
PORT at every address routed locally to this namespace (`ip route add local 10.77.0.0/16 dev
lo` makes a socket bound to 0.0.0.0 answer for all of them) and closes each at once.
Usage: accept_all.py PORT"""
import socket
import sys

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(4096)
while True:
    connection, _ = listener.accept()
    connection.close()
