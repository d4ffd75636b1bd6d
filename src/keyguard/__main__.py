from keyguard.cli import main

main()
