from beatd.cli import main

main()
