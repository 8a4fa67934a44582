from idcontact.cli import main

main()
