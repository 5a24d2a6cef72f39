"""What an operator can ask of beatd, the same through each way in: the command line
(`beatd.cli`) and the HTTP API (`beatd.http`). Each function takes parsed values and a backend
and returns values; reading options, printing and HTTP are the ways in's own."""
