from phenoclip.cli.main import main

main()
